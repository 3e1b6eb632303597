"""Padding-free training steps on CPU: the encoder runs on a batch's real tokens only.

With dynamic padding a batch of 8 random MRPC rows is as wide as its longest row: 35% of its tokens
are padding, and every linear layer, GELU, LayerNorm and dropout pays for them. Here the batch stays
the same rows (the sampler, the optimizer and the loss see no difference); only inside the model are
its real tokens laid end to end as one row of T tokens:
- embeddings get each token's own position (the column it had in the padded batch, as BERT gives it);
- every token-wise layer works on T tokens instead of rows x width;
- attention scatters queries, keys and values back to the padded layout, attends there under the
  usual padding mask (with whatever attention the model runs: SDPA, eager, numpy dropout masks), and
  gathers the real tokens again: padding never reaches a real token, exactly as before;
- the last layer computes keys and values for every real token but the rest (queries, attention,
  output projection, feed-forward: 80% of a layer's work) only for each row's first token, the one
  the pooler and the classifier read: the other tokens' last-layer states reach no loss;
The math per real token is the padded batch's; sums differ only in float order (checked at setup).
Numpy dropout masks (train.cpu_dropout) are drawn for the padded layout and kept where the packed
batch uses them: a packed step draws the masks the padded step draws, so packing changes speed and
nothing else.

Only for BERT sequence classifiers in training mode with right padding (what ftlaunch's collator
makes); evaluation and everything else take the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from types import MethodType

import torch

from launcher.train.cpu_dropout import packed_layout as _CURRENT  # numpy dropout reads it

PACKED_PREFIX = "ftlaunch_packed:"  # + the attention implementation it wraps


@dataclass(frozen=True)
class Packing:
    """Where a padded batch's real tokens sit, and the padding mask of its padded layout."""

    index: torch.Tensor  # [T]: row * width + column of each real token, row-major
    starts: torch.Tensor  # [rows]: each row's first token in the packed row
    rows: int
    width: int

    @classmethod
    def of(cls, attention_mask: torch.Tensor) -> Packing | None:
        """None when packing saves nothing (no padding) or cannot keep the math (a row not starting
        with a real token: the pooler reads column 0 of the padded batch)."""
        keep = attention_mask.bool()
        if keep.all() or not keep[:, 0].all():
            return None
        lengths = keep.sum(1)
        starts = torch.cumsum(lengths, 0) - lengths
        index = keep.flatten().nonzero().squeeze(1)
        rows, width = keep.shape
        return cls(index, starts, rows, width)

    @property
    def tokens(self) -> int:
        return self.index.numel()

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[1, heads, T, dim] -> [rows, heads, width, dim], zeros where the padding was."""
        tokens = packed[0].transpose(0, 1)  # [T, heads, dim]
        full = tokens.new_zeros((self.rows * self.width, *tokens.shape[1:])).index_copy(0, self.index, tokens)
        return full.view(self.rows, self.width, *tokens.shape[1:]).transpose(1, 2)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[rows, width, heads, dim] -> [1, T, heads, dim]: the real tokens only."""
        flat = padded.reshape(self.rows * self.width, *padded.shape[2:])
        return flat.index_select(0, self.index).unsqueeze(0)

    # Dropout masks (launcher.train.cpu_dropout): a packed [1, T, hidden] tensor is the padded batch's
    # [rows, width, hidden] one at its real tokens.
    def padded_shape(self, shape: torch.Size) -> tuple[int, ...] | None:
        if len(shape) == 3 and shape[0] == 1 and shape[1] == self.tokens:
            return (self.rows * self.width, shape[2])
        return None

    def from_padded(self, mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return mask.index_select(0, self.index).view(shape)


@dataclass(frozen=True)
class FirstTokens:
    """Inside the last layer of a packed batch only each row's first token goes on: [rows, 1, hidden]
    tensors, and attention probabilities [rows, heads, 1, width] of those tokens' queries. Each is
    the padded batch's tensor at column 0 (its query row 0), for dropout masks as for Packing."""

    rows: int
    width: int

    def padded_shape(self, shape: torch.Size) -> tuple[int, ...] | None:
        if len(shape) == 3 and shape[:2] == (self.rows, 1):
            return (self.rows, self.width, shape[2])
        if len(shape) == 4 and shape[0] == self.rows and shape[2:] == (1, self.width):
            return (self.rows, shape[1], self.width, self.width)
        return None

    def from_padded(self, mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return mask.narrow(-2, 0, 1).contiguous().view(shape)


def packed_attention(module, query, key, value, attention_mask, *, inner: str, ftl_packing: Packing | None = None,
                     **kwargs):  # fmt: skip
    """The model's own attention (`inner`), run on the padded layout of a packed batch (whose mask,
    built for that layout, is `attention_mask`)."""
    attend = _attention(inner, module)
    if ftl_packing is None:
        return attend(module, query, key, value, attention_mask, **kwargs)
    unpack = ftl_packing.unpack
    output, weights = attend(module, unpack(query), unpack(key), unpack(value), attention_mask, **kwargs)
    return ftl_packing.pack(output), weights


def first_tokens_layer(layer, plain_forward, inner: str, hidden_states, attention_mask=None,
                       encoder_hidden_states=None, *args, **kwargs):  # fmt: skip
    """The encoder's last layer for a packed batch: keys and values for every real token, everything
    else (queries, attention, output projection, feed-forward) for each row's first token only, which
    is all the pooler reads. Returns [rows, 1, hidden]; the pooler takes column 0 of it as it would of
    the padded batch. Any other call runs the layer's own forward (on a packed batch that would hand the
    pooler the packed row, and the setup check would refuse packing)."""
    packing = kwargs.get("ftl_packing")
    if (packing is None or args or encoder_hidden_states is not None or kwargs.get("cache") is not None
            or hidden_states.shape[:2] != (1, packing.tokens)):  # fmt: skip
        return plain_forward(hidden_states, attention_mask, encoder_hidden_states, *args, **kwargs)
    attention = layer.attention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size
    first = hidden_states[0, packing.starts].unsqueeze(1)  # [rows, 1, hidden]

    def by_head(states):  # [..., tokens, hidden] -> [..., heads, tokens, size]
        return states.view(*states.shape[:-1], heads, size).transpose(-3, -2)

    query = by_head(attention.query(first))
    key = packing.unpack(by_head(attention.key(hidden_states)))
    value = packing.unpack(by_head(attention.value(hidden_states)))
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
        attention_mask = attention_mask[:, :, :1]  # the first tokens' queries
    state = _CURRENT.set(FirstTokens(packing.rows, packing.width))
    try:
        dropout = attention.dropout.p if attention.training else 0.0
        context, _ = _attention(inner, attention)(attention, query, key, value, attention_mask, dropout=dropout,
                                                  scaling=attention.scaling)  # fmt: skip
        attention_output = layer.attention.output(context.reshape(packing.rows, 1, -1), first)
        return layer.feed_forward_chunk(attention_output)
    finally:
        _CURRENT.reset(state)


def _attention(inner: str, module):
    """The attention function transformers would call for `inner` in `module`'s model."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[inner] if inner != "eager" else _eager(module)


def _eager(module):
    import sys

    return sys.modules[type(module).__module__].eager_attention_forward


def packing_wanted(setting: str, device: str, padding: str | None, backend: str) -> str | None:
    """Why a run does not try packing (None: it does): only CPU, dynamic padding, DDP (DeepSpeed
    partitions the model itself; GPUs and TPUs have their own answers to padding)."""
    if setting == "off":
        return "train.packed_sequences: off"
    if device != "cpu":
        return f"device {device}"
    if padding != "dynamic":
        return f"data.padding {padding}"
    if backend != "ddp":
        return f"backend {backend}"
    return None


def supported(model) -> str | None:
    """Why this model cannot train packed, or None when it can."""
    if type(model).__name__ != "BertForSequenceClassification" or getattr(model.config, "model_type", None) != "bert":
        return f"{type(model).__name__} is not a BERT sequence classifier"
    if getattr(model.config, "is_decoder", False) or getattr(model.config, "add_cross_attention", False):
        return "decoder/cross-attention BERT"
    if getattr(model.bert, "pooler", None) is None:
        return "no pooler"
    if not hasattr(model, "set_attn_implementation"):
        return "this transformers has no attention interface"
    attention = model.config._attn_implementation
    if attention.startswith("flash") or attention == "flex_attention":
        return f"attention {attention} takes no padded layout here"
    return None


def use_packed_sequences(model) -> str | None:
    """Make `model` train padding-free; returns why not (and leaves it untouched) where it cannot."""
    reason = supported(model)
    if reason:
        return reason
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, create_bidirectional_mask

    inner = model.config._attn_implementation
    name = PACKED_PREFIX + inner
    AttentionInterface.register(name, partial(packed_attention, inner=inner))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])  # unpacked (evaluation) batches
    plain_forward = model.forward
    model.set_attn_implementation(name)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, *args, **kwargs):
        packing = None
        if self.training and not args and input_ids is not None and attention_mask is not None and input_ids.dim() == 2:
            if not {"position_ids", "inputs_embeds"} & {k for k, v in kwargs.items() if v is not None}:
                packing = Packing.of(attention_mask)
        if packing is None:
            return plain_forward(input_ids, attention_mask, token_type_ids, *args, **kwargs)
        keep = attention_mask.bool()
        columns = torch.arange(packing.width, device=input_ids.device).expand_as(input_ids)
        # The padded layout's mask, built by transformers as the padded forward builds it (SDPA's boolean
        # mask, eager's additive one); passed on in 4D, it is used as given.
        layout = torch.empty((packing.rows, packing.width, 0), dtype=self.dtype, device=input_ids.device)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=layout, attention_mask=attention_mask)
        state = _CURRENT.set(packing)
        try:
            return plain_forward(
                input_ids[keep].unsqueeze(0), mask,
                token_type_ids[keep].unsqueeze(0) if token_type_ids is not None else None,
                position_ids=columns[keep].unsqueeze(0), ftl_packing=packing, **kwargs,
            )  # fmt: skip
        finally:
            _CURRENT.reset(state)

    model.forward = MethodType(forward, model)  # bound, as accelerate's autocast wrapper expects
    last = model.bert.encoder.layer[-1]
    last.forward = partial(first_tokens_layer, last, last.forward, inner)
    reason = _disagrees(model, plain_forward)
    if reason:
        undo(model, inner)
        return reason
    return None


def undo(model, inner: str) -> None:
    model.__dict__.pop("forward", None)
    model.bert.encoder.layer[-1].__dict__.pop("forward", None)
    model.set_attn_implementation(inner)


def _disagrees(model, plain_forward) -> str | None:
    """A check at setup that this transformers still takes the packed batch as intended: logits and
    gradients of a small padded batch, packed vs not (dropout off), must agree."""
    was_training = model.training
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (3, 7), generator=generator)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    types = torch.tensor([[0] * 4 + [1] * 3, [0] * 2 + [1] * 2 + [0] * 3, [0] * 7])
    device = next(model.parameters()).device
    ids, mask, types = ids.to(device), mask.to(device), types.to(device)
    dropouts = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    try:
        model.train()
        for module, _ in dropouts:
            module.p = 0.0
        results = []
        for forward in (model.forward, plain_forward):
            model.zero_grad(set_to_none=True)
            logits = forward(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            logits.float().pow(2).sum().backward()
            grad = model.bert.embeddings.word_embeddings.weight.grad
            results.append((logits.detach().float(), grad.detach().float().clone()))
        (packed, packed_grad), (padded, padded_grad) = results
        if not torch.allclose(packed, padded, atol=1e-5, rtol=1e-5):  # measured: equal on MiniLM
            return f"packed logits differ from padded ones by {(packed - padded).abs().max():.2e}"
        if not torch.allclose(packed_grad, padded_grad, atol=1e-5, rtol=1e-4):
            return f"packed gradients differ from padded ones by {(packed_grad - padded_grad).abs().max():.2e}"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: do not pack
        return f"packed forward failed: {type(exc).__name__}: {exc}"
    finally:
        model.zero_grad(set_to_none=True)
        for module, p in dropouts:
            module.p = p
        model.train(was_training)
