"""Dropout masks on CPU from numpy's SFC64 generator instead of torch's Bernoulli kernel.

torch draws CPU dropout masks with `bernoulli_`, about 8 ns per element on these machines: a MiniLM
step at batch 8 x 64 tokens draws 5 million (hidden states and attention probabilities), 35-40 ms
of a 0.25 s step. numpy's SFC64 gives four 16-bit words per raw 64-bit output, about 0.7 ns per
element. The masks keep dropout's definition: each element is dropped independently with probability
p (quantised to 1/65536: 0.1 -> 6554/65536, off by under 1e-5) and the kept ones are scaled by 1/(1-p).

Each mask's generator is seeded with one draw from torch's default generator, which the training
loop reseeds for every micro-batch: a resumed run draws the same masks for the same rows, as it did
with torch's kernel.

Attention-probability dropout happens inside SDPA, out of reach of a module swap, so models whose
attention goes through transformers' attention interface get one more implementation: SDPA's own
math (softmax(QK^T/sqrt(d) + mask), dropout, @V) with these masks while training, SDPA itself
otherwise. Causal and grouped-query attention keep SDPA with torch's dropout.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Literal

import numpy as np
import torch

CpuDropout = Literal["numpy", "torch"]
ATTENTION_NAME = "ftlaunch_sdpa_numpy_dropout"
_LEVELS = 1 << 16


def choose_cpu_dropout(setting: str, device: str) -> CpuDropout:
    """`numpy` masks on CPU (auto or asked for); GPUs and XLA devices draw their own masks on the device."""
    return "numpy" if setting != "torch" and device == "cpu" else "torch"


# Set by launcher.train.packing while a packed batch runs through the model. Its `padded_shape(shape)`
# names the padded batch's tensor that one of the packed batch's tensors is part of (None for any other
# tensor), and `from_padded(mask, shape)` keeps that part of the padded tensor's mask: a packed batch draws
# the masks the padded batch draws, so packing a batch changes no dropout mask.
packed_layout: ContextVar = ContextVar("ftlaunch_packed_layout", default=None)


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """True where an element is kept; each is dropped with probability round(p * 65536) / 65536."""
    layout = packed_layout.get()
    padded_shape = layout.padded_shape(shape) if layout is not None else None
    if padded_shape is not None:
        return layout.from_padded(_draw(padded_shape, p), shape)
    return _draw(shape, p)


def _draw(shape: tuple[int, ...] | torch.Size, p: float) -> torch.Tensor:
    seed = int(torch.randint(0, 2**62, (1,)).item())  # follows torch.manual_seed, so a resume replays it
    count = int(np.prod(shape))
    # Four 16-bit words from each raw 64-bit output: twice as fast as Generator.integers, same uniform words.
    words = np.random.SFC64(seed).random_raw(-(-count // 4)).view("<u2")[:count]
    return torch.from_numpy(words >= round(p * _LEVELS)).view(shape)


def _scaled(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """x where kept, times scale; 0 where dropped: bit-identical to x.masked_fill(~keep, 0) * scale.
    An fp32 mask already holds the scale (see _Dropout): one multiply. A boolean mask takes the kernel
    torch's own dropout backward runs (multiply by mask and scale in one call)."""
    if keep.dtype == torch.bool:
        return torch.ops.aten.native_dropout_backward(x, keep, scale)
    return x * keep


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        ctx.scale = 1.0 / (1.0 - p)
        if x.dtype == torch.float32:  # scale or 0 per element: each use is one multiply (4 bytes kept, not 1)
            keep = torch.where(keep, ctx.scale, 0.0)
        ctx.save_for_backward(keep)
        return _scaled(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _scaled(grad_out, keep, ctx.scale), None


def numpy_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0 or x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training)
    if p == 1.0:
        return torch.zeros_like(x)
    return _Dropout.apply(x, p)


class NumpyDropout(torch.nn.Dropout):
    """nn.Dropout with numpy masks (same p, no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return numpy_dropout(x, self.p, self.training)


def sdpa_with_numpy_dropout(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' SDPA attention, with the dropout on attention probabilities drawn by `numpy_dropout`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if dropout == 0.0 or is_causal or key.shape[1] != query.shape[1] or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)  # fmt: skip
    # In place: neither the product's nor the scaling's backward needs the scores they overwrite.
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # SDPA's convention: True = attend
            scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores += attention_mask
    probs = numpy_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def use_numpy_dropout(model: torch.nn.Module) -> dict:
    """Swap every exact nn.Dropout of `model` for NumpyDropout and, where the model runs transformers'
    SDPA attention, its attention for sdpa_with_numpy_dropout (masks built as for SDPA). Parameters,
    state dict and the saved config are untouched. Returns what was swapped."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:  # subclasses keep their own forward
            module.__class__ = NumpyDropout
            swapped += 1
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attention == "sdpa" and hasattr(model, "set_attn_implementation"):
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, sdpa_with_numpy_dropout)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        model.set_attn_implementation(ATTENTION_NAME)
        attention = ATTENTION_NAME
    return {"modules": swapped, "attention": attention}
