"""The XLA pieces that need no XLA device: evaluation batches of one shape whose filler rows never
reach the metrics, the compile guard's bookkeeping (per epoch, leaks with their step), the records
that carry the counts, and the report's XLA row. The real thing runs in tests/test_xla_train.py."""

from __future__ import annotations

import torch

from launcher.collect.xla import xla_rows, xla_section
from launcher.train.xla import FILLER_KEY, CompileWatch, CountingRecords, FillToBatch, drop_filler


def collate(features: list[dict]) -> dict:
    return {key: torch.tensor([f[key] for f in features]) for key in features[0]}


def test_fill_to_batch_keeps_the_shape_and_flags_the_filler():
    fill = FillToBatch(collate, rows=4)
    full = fill([{"input_ids": [i, i], "labels": i % 2} for i in range(4)])
    short = fill([{"input_ids": [7, 7], "labels": 1}])
    assert full["input_ids"].shape == short["input_ids"].shape == (4, 2)
    assert full[FILLER_KEY].tolist() == [0, 0, 0, 0]
    assert short[FILLER_KEY].tolist() == [0, 1, 1, 1]
    assert short["input_ids"].tolist() == [[7, 7]] * 4  # copies of a real row: nothing degenerate to run


def test_evaluation_counts_every_row_once(tiny_model_dir, mrpc_dir):
    """The real evaluate() over FillToBatch batches scores each of 51 rows once (batches of 16: the last
    one has 3 real rows and 13 filler) and gives the metrics of a plain pass over the same rows."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from launcher.recipe.schema import Recipe
    from launcher.train.evaluation import evaluate
    from launcher.train.data import load_raw, tokenize

    recipe = Recipe.model_validate({
        "name": "fill", "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"files": {"train": str(mrpc_dir / "train.jsonl"), "validation": str(mrpc_dir / "validation.jsonl")},
                 "text_fields": ["sentence1", "sentence2"], "padding": "max_length", "max_length": 64},
        "metrics": ["accuracy", "f1"],
    })  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = tokenize(recipe, load_raw(recipe), tokenizer, "validation", 51)
    base = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=64)
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir))
    filled = evaluate(model, DataLoader(rows, batch_size=16, collate_fn=FillToBatch(base, 16)), accelerator, recipe)
    plain = evaluate(model, DataLoader(rows, batch_size=51, collate_fn=base), accelerator, recipe)
    assert filled["rows"] == plain["rows"] == 51
    assert filled["metrics"]["validation_accuracy"] == plain["metrics"]["validation_accuracy"]
    assert abs(filled["metrics"]["validation_loss"] - plain["metrics"]["validation_loss"]) < 1e-5


def test_drop_filler():
    logits, labels = torch.arange(8.0).reshape(4, 2), torch.tensor([0, 1, 1, 0])
    kept_logits, kept_labels = drop_filler(logits, labels, torch.tensor([0, 0, 1, 1]))
    assert kept_labels.tolist() == [0, 1] and kept_logits.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert drop_filler(logits, labels, None)[1].tolist() == [0, 1, 1, 0]


class Counter:
    """A compile counter the test moves by hand."""

    def __init__(self):
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_static_shapes_compile_only_in_the_first_epoch():
    counter, said = Counter(), []
    watch = CompileWatch(True, count=counter, say=said.append)
    counter.value = 3  # first step, steady step, logging variant: all in epoch 1
    for step in range(1, 5):
        watch.after_step(step, epoch=0)
    counter.value = 4  # the evaluation graph
    watch.observe()
    for step in range(5, 9):
        watch.after_step(step, epoch=1)
    summary = watch.summary()
    assert summary == {"xla_compiles": 4, "xla_compiles_by_epoch": {"1": 4, "2": 4},
                       "xla_compiles_after_first_epoch": 0, "xla_leak_steps": []}  # fmt: skip
    assert said == []


def test_a_shape_leak_is_named_with_its_step():
    counter, said = Counter(), []
    watch = CompileWatch(True, count=counter, say=said.append)
    for step in range(1, 5):
        counter.value += 1  # a new shape at every step (dynamic padding)
        watch.after_step(step, epoch=0)
    assert said == []  # the first epoch compiles what it needs: no warning
    for step in range(5, 9):
        counter.value += step % 2  # new shapes at steps 5 and 7 only
        watch.after_step(step, epoch=1)
    summary = watch.summary()
    assert summary["xla_leak_steps"] == [5, 7] and summary["xla_compiles_after_first_epoch"] == 2
    assert summary["xla_compiles_by_epoch"] == {"1": 4, "2": 6}
    assert "between step 4 and step 5, in epoch 2" in said[0] and "between step 6 and step 7" in said[1]
    assert "2 graph(s) after the first epoch, at steps 5, 7" in said[-1]


def test_the_first_evaluation_or_logging_step_compiles_as_warm_up():
    """eval_steps or logging_steps longer than an epoch put the first evaluation (or the first parameter
    checksum) after the first epoch: its graphs are new but no leak; a later one that compiles is."""
    counter, said = Counter(), []
    watch = CompileWatch(True, count=counter, say=said.append)
    records = CountingRecords(type("Sink", (), {"write": lambda self, kind, **fields: None})(), watch)
    for step in range(1, 9):
        watch.after_step(step, epoch=step // 5)  # epoch 2 from step 5
    counter.value += 1
    records.write("eval", step=8)  # the first evaluation, in epoch 2: its graph is warm-up
    counter.value += 1
    records.write("eval", step=8)  # an evaluation that compiles again: its shapes changed
    assert watch.summary()["xla_leak_steps"] == [8]
    assert len(said) == 2 and "at an evaluation after step 8" in said[0]


def test_logging_steps_run_the_step_graph_first(monkeypatch):
    import launcher.train.xla as xla

    synced = []
    monkeypatch.setattr(xla, "sync", lambda: synced.append(True))
    watch = CompileWatch(False, count=Counter(), sync_steps=lambda step: step % 3 == 0)
    for step in range(1, 10):
        watch.after_step(step, epoch=0)
    assert len(synced) == 3


def test_records_carry_the_counts(monkeypatch):
    import launcher.train.xla as xla

    monkeypatch.setattr(xla, "transfer_count", lambda: 11)
    written = []

    class Sink:
        def write(self, kind, **fields):
            written.append((kind, fields))

        path = "rank-0.jsonl"

    counter = Counter()
    records = CountingRecords(Sink(), CompileWatch(False, count=counter))
    counter.value = 2
    records.write("train", step=1, loss=0.5)
    records.write("eval", metrics={})
    records.write("summary", steps=1)
    assert written[0] == ("train", {"step": 1, "loss": 0.5, "xla_compiles": 2, "xla_host_transfers": 11})
    assert written[1][1]["xla_compiles"] == 2
    assert written[2][1]["xla_compiles_by_epoch"] == {"1": 2}
    assert records.path == "rank-0.jsonl"  # everything else passes through


def test_report_row():
    merged = [{"type": "summary", "rank": 0, "xla_compiles": 6, "xla_compiles_by_epoch": {"1": 6, "2": 6},
               "xla_compiles_after_first_epoch": 0, "xla_leak_steps": []}]  # fmt: skip
    (row,) = xla_rows({"xla": xla_section(merged)})
    assert row == ("XLA compilations", "6 (epoch 1: 6, epoch 2: 6); none after the first epoch: static shapes")
    merged[0].update(xla_compiles=9, xla_compiles_by_epoch={"1": 6, "2": 9}, xla_compiles_after_first_epoch=3,
                     xla_leak_steps=[10, 12])  # fmt: skip
    assert "3 after the first epoch (steps 10, 12): shapes are NOT static" in xla_rows({"xla": xla_section(merged)})[0][1]
    assert xla_section([{"type": "summary", "rank": 0, "steps": 3}]) is None  # not an XLA run: no row
