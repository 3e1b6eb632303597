"""Dropout masks on CPU from numpy's SFC64 generator instead of torch's Bernoulli kernel.

torch draws CPU dropout masks with `bernoulli_`, about 8 ns per element on these machines: a MiniLM
step at batch 8 x 64 tokens draws 5 million (hidden states and attention probabilities), 35-40 ms
of a 0.25 s step. numpy's SFC64 fills 16-bit words at about 1.6 ns per element. The masks keep
dropout's definition: each element is dropped independently with probability p (quantised to
1/65536: 0.1 -> 6554/65536, off by under 1e-5) and the kept ones are scaled by 1/(1-p).

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


# Set by launcher.train.packing while a packed batch ([1, T, hidden]: its real tokens end to end) runs
# through the model: such a tensor's mask is the one the padded batch would draw, at its real tokens,
# so that packing a batch changes no dropout mask.
packed_layout: ContextVar = ContextVar("ftlaunch_packed_layout", default=None)


def drop_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """True where an element is dropped, each with probability round(p * 65536) / 65536."""
    layout = packed_layout.get()
    if layout is not None and len(shape) == 3 and shape[0] == 1 and shape[1] == layout.tokens:
        padded = _draw((layout.rows * layout.width, shape[2]), p)
        return padded.index_select(0, layout.index).view(shape)
    return _draw(shape, p)


def _draw(shape: tuple[int, ...] | torch.Size, p: float) -> torch.Tensor:
    seed = int(torch.randint(0, 2**62, (1,)).item())  # follows torch.manual_seed, so a resume replays it
    words = np.random.Generator(np.random.SFC64(seed)).integers(0, _LEVELS, int(np.prod(shape)), dtype=np.uint16)
    return torch.from_numpy(words < round(p * _LEVELS)).view(shape)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        dropped = drop_mask(x.shape, p)
        ctx.save_for_backward(dropped)
        ctx.scale = 1.0 / (1.0 - p)
        return x.masked_fill(dropped, 0).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (dropped,) = ctx.saved_tensors
        return grad_out.masked_fill(dropped, 0).mul_(ctx.scale), None


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
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # SDPA's convention: True = attend
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
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
