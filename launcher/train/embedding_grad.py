"""A large embedding's weight gradient written into the same host memory every step.

An embedding's backward builds a dense gradient the size of the whole table (MiniLM's and
bert-base's 30522-word tables: 45 and 89 MiB in fp32), and the optimizer's `zero_grad(set_to_none)`
frees it after every step. Blocks that large are above glibc's largest mmap threshold (32 MiB), so
each step maps fresh pages and faults them in: 2.6 ms on a good step, 20-50 ms when the kernel
compacts memory for the huge pages torch asks for (measured on these 2-core VMs, fp32 and bf16).

`keep_embedding_gradients` gives such embeddings a backward that zeroes one buffer kept for the
whole run and adds the rows' gradients into it (the same sums in the same order as torch's own
kernel); autograd then takes that buffer as `.grad` without a copy. When `.grad` still holds the
previous gradient (gradient accumulation between optimizer steps), the buffer is in use, and the
backward allocates a fresh gradient as torch does.
"""

from __future__ import annotations

import torch

# Below glibc's largest mmap threshold the heap already reuses the freed block.
MIN_BYTES = 32 << 20


class _KeptBuffer:
    """One weight's gradient memory, held as a storage (not a tensor) so that the tensor handed to
    autograd has no other owner and becomes `.grad` without a copy."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.storage: torch.UntypedStorage | None = None

    def zeroed(self) -> torch.Tensor:
        if self.weight.grad is not None:  # accumulating: the kept memory is that .grad
            return torch.zeros_like(self.weight)
        if self.storage is None:
            self.storage = torch.empty_like(self.weight, memory_format=torch.contiguous_format).untyped_storage()
        kept = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)
        return kept.set_(self.storage, 0, self.weight.shape).zero_()


class _Embedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None, kept: _KeptBuffer) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.kept = padding_idx, kept
        return torch.nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (ids,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        ids = ids.reshape(-1)
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.padding_idx is not None:  # the padding row gets no gradient, as in torch's kernel
            real = ids != ctx.padding_idx
            ids, rows = ids[real], rows[real]
        grad = ctx.kept.zeroed()
        grad.index_add_(0, ids, rows.to(grad.dtype))
        return None, grad, None, None


def _forward(self: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    if ids.device.type != "cpu" or not (torch.is_grad_enabled() and self.weight.requires_grad):
        return torch.nn.functional.embedding(ids, self.weight, self.padding_idx)
    return _Embedding.apply(ids, self.weight, self.padding_idx, self._ftl_kept_gradient)


def eligible(module: torch.nn.Module) -> bool:
    """Plain dense embeddings on the CPU whose gradient glibc would map afresh every step."""
    if type(module) is not torch.nn.Embedding or module.sparse or module.max_norm is not None:
        return False
    if module.scale_grad_by_freq or module.weight.device.type != "cpu":
        return False
    return module.weight.numel() * module.weight.element_size() >= MIN_BYTES


def keep_embedding_gradients(model: torch.nn.Module) -> list[str]:
    """Give every eligible embedding of `model` a kept gradient buffer; returns their names.
    Parameters, state dict and saved model are untouched (only the instances' forward changes)."""
    kept = []
    for name, module in model.named_modules():
        if eligible(module):
            module._ftl_kept_gradient = _KeptBuffer(module.weight)
            module.forward = _forward.__get__(module)
            kept.append(name)
    return kept
