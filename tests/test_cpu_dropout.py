"""Dropout masks drawn by numpy on CPU: still dropout (rate, scale, gradient), replayed by torch's seed,
and a model with them computes what it computed before wherever no mask is drawn. A real (tiny,
random) BERT with real padding; nothing mocked."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.train.cpu_dropout import (ATTENTION_NAME, NumpyDropout, choose_cpu_dropout, numpy_dropout,
                                        sdpa_with_numpy_dropout, use_numpy_dropout)  # fmt: skip


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_at_rate_p_and_scales_the_rest(p: float):
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    y = numpy_dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # five standard deviations
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 2.0 / (1 - p)))
    y.sum().backward()  # the gradient goes through the same mask, scaled the same way
    assert torch.equal(x.grad, (y != 0).float() / (1 - p))


def test_the_fused_apply_is_bit_identical_to_masking_then_scaling():
    from launcher.train.cpu_dropout import _scaled

    x = torch.randn(257, 384, dtype=torch.float32)
    keep = torch.rand(257, 384) > 0.1
    for dtype in (torch.float32, torch.bfloat16):
        y = x.to(dtype)
        assert torch.equal(_scaled(y, keep, 1 / 0.9), y.masked_fill(~keep, 0).mul_(1 / 0.9))
    scale_or_zero = torch.where(keep, 1 / 0.9, 0.0)  # what an fp32 dropout keeps for its two multiplies
    assert torch.equal(_scaled(x, scale_or_zero, 1 / 0.9), x.masked_fill(~keep, 0).mul_(1 / 0.9))


def test_the_same_torch_seed_draws_the_same_mask():
    x = torch.ones(64, 64)
    torch.manual_seed(7)
    first = numpy_dropout(x, 0.1)
    torch.manual_seed(7)
    again = numpy_dropout(x, 0.1)
    other = numpy_dropout(x, 0.1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_edge_cases_keep_torch_semantics():
    x = torch.randn(5, 7)
    assert numpy_dropout(x, 0.3, training=False) is x
    assert numpy_dropout(x, 0.0) is x
    assert torch.equal(numpy_dropout(x, 1.0), torch.zeros_like(x))
    half = numpy_dropout(x.to(torch.bfloat16), 0.5)
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", "cpu", "numpy"), ("numpy", "cpu", "numpy"), ("torch", "cpu", "torch"),
    ("auto", "cuda", "torch"), ("numpy", "cuda", "torch"), ("auto", "xla", "torch"),
])  # fmt: skip
def test_numpy_masks_only_on_cpu(setting: str, device: str, expected: str):
    assert choose_cpu_dropout(setting, device) == expected


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, attn_implementation="sdpa")  # fmt: skip
    return BertForSequenceClassification(config)


def padded_batch():
    ids = torch.randint(5, 200, (4, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1:, 7:] = 0
    return ids, mask


def test_swapped_model_keeps_its_state_dict_and_evaluates_identically():
    before, after = tiny_bert(), tiny_bert()
    swapped = use_numpy_dropout(after)
    assert swapped == {"modules": 8, "attention": ATTENTION_NAME}  # embeddings, 3 per layer, classifier
    assert all(type(m) is not torch.nn.Dropout for m in after.modules())
    assert after.state_dict().keys() == before.state_dict().keys()
    ids, mask = padded_batch()
    before.eval(), after.eval()
    assert torch.equal(before(input_ids=ids, attention_mask=mask).logits, after(input_ids=ids, attention_mask=mask).logits)


def test_training_attention_respects_padding_like_sdpa():
    """With every p so small that no element is dropped, the training path (own attention math, numpy
    masks) gives SDPA's logits, and tokens behind the padding mask change nothing."""
    reference, ours = tiny_bert(), tiny_bert()
    use_numpy_dropout(ours)
    for model in (reference, ours):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 1e-7  # rounds to 0 of 65536: nothing dropped, scale 1 + 1e-7
    ids, mask = padded_batch()
    expected = reference(input_ids=ids, attention_mask=mask).logits
    got = ours(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    noise = ids.clone()
    noise[mask == 0] = 3
    torch.testing.assert_close(ours(input_ids=noise, attention_mask=mask).logits, got, rtol=1e-6, atol=1e-6)


def test_training_draws_numpy_masks_and_a_seed_replays_them():
    model = tiny_bert()
    use_numpy_dropout(model)
    model.train()
    ids, mask = padded_batch()
    torch.manual_seed(3)
    first = model(input_ids=ids, attention_mask=mask).logits
    torch.manual_seed(3)
    again = model(input_ids=ids, attention_mask=mask).logits
    other = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


class _Attention(torch.nn.Module):
    def __init__(self, is_causal: bool):
        super().__init__()
        self.is_causal = is_causal


@pytest.mark.parametrize(("is_causal", "kv_heads"), [(True, 4), (False, 2)])
def test_causal_and_grouped_query_attention_keep_sdpa(is_causal: bool, kv_heads: int):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = _Attention(is_causal)
    module.num_key_value_groups = 4 // kv_heads
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 6, 8, generator=gen)
    k, v = torch.randn(2, kv_heads, 6, 8, generator=gen), torch.randn(2, kv_heads, 6, 8, generator=gen)
    torch.manual_seed(5)
    expected, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.2)
    torch.manual_seed(5)
    got, _ = sdpa_with_numpy_dropout(module, q, k, v, None, dropout=0.2)
    assert torch.equal(got, expected)


def test_saved_model_names_no_custom_attention(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_bert()
    use_numpy_dropout(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert ATTENTION_NAME not in json.dumps(config)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation != ATTENTION_NAME


def test_subclasses_of_dropout_keep_their_forward():
    class Custom(torch.nn.Dropout):
        pass

    model = torch.nn.Sequential(torch.nn.Dropout(0.1), Custom(0.1))
    use_numpy_dropout(model)
    assert type(model[0]) is NumpyDropout and type(model[1]) is Custom
