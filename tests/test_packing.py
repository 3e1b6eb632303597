"""Padding-free training steps (launcher.train.packing): a packed batch computes what the padded batch
computes (logits, loss, gradients), the token-wise layers see only real tokens, and everything that
cannot be packed exactly runs the model's own forward. A real (tiny, random) BERT; nothing mocked."""

from __future__ import annotations

import json

import pytest
import torch

from launcher.train.cpu_dropout import ATTENTION_NAME, use_numpy_dropout
from launcher.train.packing import PACKED_PREFIX, Packing, packing_wanted, use_packed_sequences


def tiny_bert(seed: int = 0, attention: str = "sdpa"):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, attn_implementation=attention)  # fmt: skip
    return BertForSequenceClassification(config)


def padded_batch(rows: int = 4, width: int = 12, lengths=(12, 7, 3, 9)) -> dict:
    generator = torch.Generator().manual_seed(1)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = torch.randint(5, 200, (rows, width), generator=generator) * mask  # padding: token 0
    types = (torch.arange(width) >= 4).long().expand(rows, width) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": torch.tensor([0, 1, 1, 0])}


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", "eager", "numpy-dropout"])
def test_packed_step_computes_the_padded_steps_loss_and_gradients(attention):
    padded = no_dropout(tiny_bert(attention="sdpa" if attention == "numpy-dropout" else attention)).train()
    packed = no_dropout(tiny_bert(attention="sdpa" if attention == "numpy-dropout" else attention)).train()
    if attention == "numpy-dropout":
        use_numpy_dropout(packed)
        assert packed.config._attn_implementation == ATTENTION_NAME
    assert use_packed_sequences(packed) is None
    assert packed.config._attn_implementation.startswith(PACKED_PREFIX)
    batch = padded_batch()
    loss, grads = loss_and_grads(padded, batch)
    packed_loss, packed_grads = loss_and_grads(packed, batch)
    assert torch.allclose(packed_loss, loss, atol=1e-6)
    assert grads.keys() == packed_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-6, rtol=1e-4), name


def test_with_numpy_dropout_masks_a_packed_step_is_the_padded_step():
    """Dropout on: the packed batch draws the padded batch's masks (kept at its real tokens), so the
    same seed gives the same loss and gradients, packed or not."""
    padded, packed = use_numpy_dropout_model(), use_and_check(use_numpy_dropout_model())
    padded.train(), packed.train()
    batch = padded_batch()
    torch.manual_seed(11)
    loss, grads = loss_and_grads(padded, batch)
    torch.manual_seed(11)
    packed_loss, packed_grads = loss_and_grads(packed, batch)
    assert torch.allclose(packed_loss, loss, atol=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-6, rtol=1e-4), name
    torch.manual_seed(12)  # and the masks do matter: another seed, another loss
    assert not torch.allclose(loss_and_grads(packed, batch)[0], loss, atol=1e-4)


def test_token_wise_layers_see_only_real_tokens():
    model = use_and_check(tiny_bert()).train()
    seen = []
    model.bert.encoder.layer[0].intermediate.dense.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    batch = padded_batch()
    model(**batch)
    assert seen == [torch.Size([1, 12 + 7 + 3 + 9, 32])]  # 31 real tokens, not 4 x 12 = 48


def test_the_last_layer_computes_only_what_the_pooler_reads():
    """Keys and values of every real token, queries and the feed-forward for each row's first token."""
    model = use_and_check(tiny_bert()).train()
    last = model.bert.encoder.layer[-1]
    seen = {}
    for name, module in [("key", last.attention.self.key), ("query", last.attention.self.query),
                         ("feed-forward", last.intermediate.dense)]:  # fmt: skip
        module.register_forward_hook(lambda m, i, o, name=name: seen.update({name: i[0].shape}))
    model(**padded_batch())
    assert seen == {"key": torch.Size([1, 31, 32]), "query": torch.Size([4, 1, 32]),
                    "feed-forward": torch.Size([4, 1, 32])}  # fmt: skip


@pytest.mark.parametrize("case", ["eval", "no padding", "left padding"])
def test_what_cannot_gain_or_keep_the_math_runs_padded(case):
    model = use_and_check(tiny_bert()).train()
    batch = padded_batch()
    if case == "eval":
        model.eval()
    elif case == "no padding":
        batch = padded_batch(lengths=(12, 12, 12, 12))
    else:  # the pooler reads column 0 of the padded batch: a left-padded row starts with padding
        batch["attention_mask"] = batch["attention_mask"].flip(1)
        assert Packing.of(batch["attention_mask"]) is None
    seen = []
    for layer in model.bert.encoder.layer:
        layer.intermediate.dense.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(**batch)
    assert seen == [torch.Size([4, 12, 32])] * 2


def test_dropout_still_drops_and_the_seed_replays_it():
    model = use_and_check(use_numpy_dropout_model()).train()
    batch = padded_batch()
    torch.manual_seed(3)
    first = model(**batch).logits
    torch.manual_seed(3)
    again = model(**batch).logits
    torch.manual_seed(4)
    other = model(**batch).logits
    assert torch.equal(first, again) and not torch.allclose(first, other)


def use_numpy_dropout_model():
    model = tiny_bert()
    use_numpy_dropout(model)
    return model


def use_and_check(model):
    assert use_packed_sequences(model) is None
    return model


def test_a_model_it_cannot_pack_is_left_untouched():
    from transformers import BertConfig, BertForTokenClassification

    model = BertForTokenClassification(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=4, intermediate_size=64))  # fmt: skip
    reason = use_packed_sequences(model)
    assert reason and "BertForTokenClassification" in reason
    assert "forward" not in model.__dict__ and not model.config._attn_implementation.startswith(PACKED_PREFIX)


def test_the_setup_check_refuses_packing_that_changes_the_math(monkeypatch):
    """Were a transformers release to take the packed batch otherwise, the setup check catches it and
    the model keeps its own forward."""
    model = tiny_bert()
    pack = Packing.pack
    monkeypatch.setattr(Packing, "pack", lambda self, padded: -pack(self, padded))
    reason = use_packed_sequences(model)
    assert reason and "differ" in reason
    assert "forward" not in model.__dict__ and "forward" not in model.bert.pooler.__dict__
    assert model.config._attn_implementation == "sdpa"


def test_the_setup_check_refuses_a_last_layer_that_changes_the_math(monkeypatch):
    import launcher.train.packing as packing

    first_tokens_layer = packing.first_tokens_layer

    def doubled_when_packed(*args, **kwargs):  # the padded forward runs this layer too, untouched
        out = first_tokens_layer(*args, **kwargs)
        return 2 * out if kwargs.get("ftl_packing") is not None else out

    monkeypatch.setattr(packing, "first_tokens_layer", doubled_when_packed)
    model = tiny_bert()
    reason = use_packed_sequences(model)
    assert reason and "differ" in reason
    assert "forward" not in model.bert.encoder.layer[-1].__dict__ and "forward" not in model.__dict__


def test_saved_model_names_no_packed_attention(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = use_and_check(use_numpy_dropout_model())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path)
    assert PACKED_PREFIX not in (tmp_path / "config.json").read_text()
    json.loads((tmp_path / "config.json").read_text())
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert set(loaded.state_dict()) == set(before)
    batch = padded_batch()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)


@pytest.mark.parametrize(
    "setting, device, padding, backend, tries",
    [("auto", "cpu", "dynamic", "ddp", True), ("off", "cpu", "dynamic", "ddp", False),
     ("auto", "cuda", "dynamic", "ddp", False), ("auto", "xla", "max_length", "ddp", False),
     ("auto", "cpu", "max_length", "ddp", False), ("auto", "cpu", "dynamic", "deepspeed", False)],
)  # fmt: skip
def test_packing_is_tried_only_for_dynamic_padding_on_cpu_under_ddp(setting, device, padding, backend, tries):
    assert (packing_wanted(setting, device, padding, backend) is None) == tries
