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

Such a gradient is non-zero only on the rows of the step's tokens (a few hundred of 30522), so the
buffer also records which rows it wrote: the next step zeroes those rows only, and `clip_grad_norm_`
scales only those (the others are 0 and 0 x c = 0: torch's result, bit for bit, without two passes over
the table, 5 ms a step for MiniLM's). The record is dropped, and whole passes come back, whenever
anything else may have written the gradient: a second use of the weight (a tied head), a cross-rank
average, a loop that never frees `.grad`, a non-finite norm.
"""

from __future__ import annotations

import torch

# Below glibc's largest mmap threshold the heap already reuses the freed block.
MIN_BYTES = 32 << 20
# Backward passes recorded between two zeroings at most (accumulation steps); past it, rows are forgotten.
MAX_RECORDED = 64


class _KeptBuffer:
    """One weight's gradient memory, held as a storage (not a tensor) so that the tensor handed to
    autograd has no other owner and becomes `.grad` without a copy."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.storage: torch.UntypedStorage | None = None
        # Row ids of every gradient this embedding produced since the buffer was zeroed: the only rows
        # of the buffer (and of `.grad`) that can be non-zero. None: unknown, any row may be.
        self.written: list[torch.Tensor] | None = None
        self.returned: int | None = None  # the address of the gradient the backward last returned
        weight.register_hook(self._arriving)

    def _arriving(self, grad: torch.Tensor) -> None:
        """The weight's whole gradient of a backward pass, before autograd stores it: when that is not
        this embedding's own (another use of the weight added its share), the row record is void."""
        if grad.data_ptr() != self.returned:
            self.written = None
        self.returned = None

    def record(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        self.returned = grad.data_ptr()
        if self.written is None:
            return
        averaged = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1  # DDP's average brings other ranks' rows  # fmt: skip
        self.written = None if averaged or len(self.written) >= MAX_RECORDED else [*self.written, ids]

    def rows(self) -> torch.Tensor | None:
        """The rows of `.grad` that may be non-zero (None: any)."""
        return torch.cat(self.written).unique() if self.written else None

    def forget(self) -> None:
        self.written = None

    def zeroed(self) -> torch.Tensor:
        if self.weight.grad is not None:  # accumulating: the kept memory is that .grad
            return torch.zeros_like(self.weight)
        if self.storage is None:
            self.storage = torch.empty_like(self.weight, memory_format=torch.contiguous_format).untyped_storage()
        kept = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device).set_(self.storage, 0, self.weight.shape)
        if self.written is None:
            kept.zero_()
        elif self.written:
            kept.index_fill_(0, torch.cat(self.written), 0)
        self.written = []
        return kept


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
        ctx.kept.record(ids, grad)
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
            module._ftl_kept_gradient = module.weight._ftl_kept_gradient = _KeptBuffer(module.weight)
            module.forward = _forward.__get__(module)
            kept.append(name)
    return kept


def clip_grad_norm_(accelerator, parameters, max_norm: float) -> torch.Tensor | None:
    """`accelerator.clip_grad_norm_(parameters, max_norm)`, bit for bit, with each kept gradient whose
    rows are on record read and scaled on those rows only."""
    parameters = [p for p in parameters if p.grad is not None]
    kept = [p for p in parameters if getattr(p, "_ftl_kept_gradient", None) is not None]
    plain_types = ("NO", "MULTI_CPU")  # accelerate clips these with torch's get_total_norm/clip_grads_with_norm_
    if not kept or accelerator.scaler is not None or accelerator.distributed_type.name not in plain_types:
        return accelerator.clip_grad_norm_(parameters, max_norm)
    rows = {id(p): p._ftl_kept_gradient.rows() for p in kept}
    total = torch.linalg.vector_norm(torch.stack([_norm(p.grad, rows.get(id(p))) for p in parameters]), 2.0)
    if not torch.isfinite(total):  # torch spreads NaN over every row: so does the whole pass below
        for p in kept:
            p._ftl_kept_gradient.forget()
        rows = {}
    torch.nn.utils.clip_grads_with_norm_([p for p in parameters if rows.get(id(p)) is None], max_norm, total)
    clip_coef = float(max_norm) / (total + 1e-6)  # torch's clip_grads_with_norm_, to the bit
    clip_coef_clamped = torch.clamp(clip_coef, max=1.0)
    for p in kept:
        if (written := rows.get(id(p))) is not None:
            p.grad.index_copy_(0, written, p.grad.index_select(0, written).mul_(clip_coef_clamped))
    return total


# Whether torch's 2-norm of a table equals the 2-norm of its non-zero rows, bit for bit: true where its
# CPU kernel sums each SIMD lane in order (zeros add nothing, and with rows a multiple of 64 wide every
# element keeps its lane); checked once per process on a real gradient, else the whole table is read.
_rows_norm_exact: bool | None = None


def _norm(grad: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    global _rows_norm_exact
    plain = rows is None or _rows_norm_exact is False or grad.dtype != torch.float32 or grad.dim() != 2 \
        or grad.shape[1] % 64 or not grad.is_contiguous()  # fmt: skip
    if plain:
        return torch.linalg.vector_norm(grad, 2.0)
    norm = torch.linalg.vector_norm(grad.index_select(0, rows), 2.0)
    if _rows_norm_exact is None:
        whole = torch.linalg.vector_norm(grad, 2.0)
        _rows_norm_exact = bool(torch.equal(norm, whole))
        return whole
    return norm
