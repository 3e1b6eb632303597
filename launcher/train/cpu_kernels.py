"""Linear layers through oneDNN where torch's default BLAS leaves the CPU's AVX-512 units idle.

torch runs fp32 `nn.Linear` on MKL's sgemm, and MKL picks its AVX-512 kernels on Intel CPUs only: on
an AMD EPYC with AVX-512 (Zen 5) it reached 190 GFLOP/s on two cores where oneDNN, shipped inside the
same torch, reached 445 on the same fp32 matrices. On an AMD CPU without AVX-512 (Zen 3) MKL's AVX2
kernels are its best and beat oneDNN's: a MiniLM step took 0.49 s with oneDNN against 0.34 s
(bench/results/cpu_kernels_zen3.md). `OneDNNLinear` computes the forward and both gradients with
oneDNN's fp32 kernels (IEEE fp32, no reduced-precision math): only the order of the sums differs from
MKL's."""

from __future__ import annotations

from typing import Literal

import torch

from launcher.cpu import cpu_flags, cpu_vendor

CpuLinear = Literal["onednn", "aten"]


def choose_cpu_linear(setting: str, device: str, precision: str, backend: str) -> CpuLinear:
    """What runs the linear layers: `onednn` only for fp32 on CPU under DDP (bf16 autocast already
    uses oneDNN; DeepSpeed ZeRO-3 replaces linear layers itself); `auto` picks it where MKL would leave
    AVX-512 unused: CPUs with AVX-512 that are not Intel's."""
    if setting == "aten" or device != "cpu" or precision != "no" or backend != "ddp":
        return "aten"
    if not onednn_linear_available():
        if setting == "onednn":
            raise RuntimeError("train.cpu_linear onednn: this torch has no oneDNN linear kernel "
                               "(torch.ops.mkldnn._linear_pointwise); use auto or aten")  # fmt: skip
        return "aten"
    if setting == "onednn":
        return "onednn"
    return "onednn" if mkl_skips_avx512() else "aten"


def mkl_skips_avx512() -> bool:
    """True on a CPU that has AVX-512 but is not Intel's: MKL runs its AVX2 kernels there."""
    return "avx512f" in cpu_flags() and cpu_vendor() != "GenuineIntel"


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) for 2-D x, by oneDNN; weight may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """F.linear with forward, input gradient and weight gradient all computed by oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])
        return _onednn_matmul(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad_out @ W
            grad_x = _onednn_matmul(grad_rows, weight.t(), None).reshape(x.shape)
        if ctx.needs_input_grad[1]:  # grad_out.T @ x
            grad_weight = _onednn_matmul(grad_rows.t(), x.reshape(-1, x.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def _onednn_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if (x.dtype != torch.float32 or self.weight.dtype != torch.float32 or x.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")):  # autocast chooses the kernels and dtypes itself
        return torch.nn.functional.linear(x, self.weight, self.bias)
    return OneDNNLinear.apply(x, self.weight, self.bias)


def route_linears_to_onednn(model: torch.nn.Module) -> int:
    """Run every nn.Linear of `model` through oneDNN; parameters, state dict and saved model are
    untouched (only the instances' forward changes). Returns how many layers were routed."""
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:  # subclasses (quantized, LoRA) keep their own forward
            module.forward = _onednn_forward.__get__(module)
            routed += 1
    return routed
