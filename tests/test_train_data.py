"""The data pipeline every rank runs: tokenize once, labels renamed, dynamic vs fixed-length padding."""

from __future__ import annotations

import json

import pytest

from ftl_support import MRPC_RECIPE
from launcher.recipe import load_recipe, parse_override


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(reset_partial_state=True)


def recipe_with(model_dir, train_file, eval_file, **fields):
    overrides = {
        "model.name_or_path": model_dir, "data.dataset": "null", "data.config": "null",
        "data.files.train": train_file, "data.files.validation": eval_file,
        "data.max_train_samples": 96, "data.max_eval_samples": 40, "train.per_device_batch_size": 8, **fields,
    }  # fmt: skip
    return load_recipe(MRPC_RECIPE, [parse_override(f"{k}={v}") for k, v in overrides.items()]).recipe


def loaders_for(recipe, accelerator):
    from launcher.train.data import build_loaders
    from launcher.train.model import load_tokenizer

    return build_loaders(recipe, load_tokenizer(recipe), accelerator, global_batch=8, eval_batch_size=16)


def test_dynamic_padding_pads_each_batch_to_its_longest_row(tiny_model_dir, mrpc_dir, accelerator):
    recipe = recipe_with(tiny_model_dir, mrpc_dir / "train.jsonl", mrpc_dir / "validation.jsonl")
    loaders = loaders_for(recipe, accelerator)
    widths = set()
    for batch in loaders.train:
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        longest = int(batch["attention_mask"].sum(dim=1).max())
        assert batch["input_ids"].shape[1] == longest <= recipe.data.max_length
        widths.add(longest)
    assert len(widths) > 1, "dynamic padding should give batches of different widths"
    assert loaders.train_rows == 96 and loaders.eval_rows == 40


def test_dynamic_padding_rounds_up_to_a_multiple(tiny_model_dir, mrpc_dir, accelerator):
    recipe = recipe_with(tiny_model_dir, mrpc_dir / "train.jsonl", mrpc_dir / "validation.jsonl",
                         **{"data.pad_to_multiple_of": 8})  # fmt: skip
    for batch in loaders_for(recipe, accelerator).train:
        width = batch["input_ids"].shape[1]
        assert width % 8 == 0
        assert width - int(batch["attention_mask"].sum(dim=1).max()) < 8


def test_max_length_padding_gives_every_batch_the_same_shape(tiny_model_dir, mrpc_dir, accelerator):
    recipe = recipe_with(tiny_model_dir, mrpc_dir / "train.jsonl", mrpc_dir / "validation.jsonl",
                         **{"data.padding": "max_length", "data.max_length": 64})  # fmt: skip
    loaders = loaders_for(recipe, accelerator)
    shapes = {tuple(batch["input_ids"].shape[1:]) for batch in loaders.train}
    shapes |= {tuple(batch["input_ids"].shape[1:]) for batch in loaders.eval}
    assert shapes == {(64,)}


def test_single_sentence_task_and_label_values(tiny_model_dir, tmp_path, accelerator):
    rows = [{"sentence": f"this is sentence number {i} " + "word " * (i % 7), "label": i % 2} for i in range(30)]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_with(tiny_model_dir, tmp_path / "train.jsonl", tmp_path / "validation.jsonl",
                         **{"data.text_fields": "[sentence]"})  # fmt: skip
    loaders = loaders_for(recipe, accelerator)
    labels = sorted(int(v) for batch in loaders.eval for v in batch["labels"])
    assert labels == sorted(r["label"] for r in rows)
    batch = next(iter(loaders.train))
    assert int(batch["token_type_ids"].max()) == 0  # one segment only


def test_missing_text_field_is_a_clear_error(tiny_model_dir, mrpc_dir, accelerator):
    recipe = recipe_with(tiny_model_dir, mrpc_dir / "train.jsonl", mrpc_dir / "validation.jsonl",
                         **{"data.text_fields": "[sentence1, question]"})  # fmt: skip
    with pytest.raises(ValueError, match=r"no field\(s\) \['question'\].*data.text_fields"):
        loaders_for(recipe, accelerator)


def test_length_grouping_cuts_padding_and_reshuffles_per_epoch(tiny_model_dir, mrpc_dir, accelerator):
    def padding_waste(loader):
        return sum(int(b["attention_mask"].numel() - b["attention_mask"].sum()) for b in loader)

    plain = recipe_with(tiny_model_dir, mrpc_dir / "train.jsonl", mrpc_dir / "validation.jsonl",
                        **{"data.max_train_samples": 400})  # fmt: skip
    grouped = recipe_with(tiny_model_dir, mrpc_dir / "train.jsonl", mrpc_dir / "validation.jsonl",
                          **{"data.max_train_samples": 400, "data.group_by_length": "true"})  # fmt: skip
    grouped_loader = loaders_for(grouped, accelerator).train
    assert padding_waste(grouped_loader) < 0.5 * padding_waste(loaders_for(plain, accelerator).train)

    sampler = grouped_loader.sampler
    sampler.set_epoch(0)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order (every rank agrees)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


def test_windowed_length_order_groups_within_windows_only():
    import torch

    from launcher.train.data import windowed_length_order

    lengths = [(i * 37) % 101 + 5 for i in range(203)]  # 203 rows: 25 batches of 8 and a short one of 3
    batch, window = 8, 4
    order = windowed_length_order(lengths, batch, window, torch.Generator().manual_seed(3))
    assert sorted(order) == list(range(203))
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    assert [len(b) for b in batches] == [8] * 25 + [3]  # the short batch is the last one
    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(3)).tolist()
    span = batch * window
    for number, rows in enumerate(batches):
        window_rows = set(shuffled[(number // window) * span : (number // window + 1) * span])
        assert set(rows) <= window_rows, f"batch {number} mixes windows"
    # inside a window the batches split the window's length order: no two batches overlap in length range
    for first in range(0, len(batches) - 1, window):
        ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches[first : first + window])
        assert all(low[1] <= high[0] for low, high in zip(ranges, ranges[1:])), ranges
    again = windowed_length_order(lengths, batch, window, torch.Generator().manual_seed(3))
    assert again == order
    assert windowed_length_order(lengths, batch, window, torch.Generator().manual_seed(4)) != order

