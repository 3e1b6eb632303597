"""`ftlaunch collect RUN --export DIR`: one Hugging Face model dir from the latest or best checkpoint
(or the final model) that loads with from_pretrained and scores what the run reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, ftlaunch, local_mrpc_overrides, only_run_dir, read_records

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory, tiny_model_dir, mrpc_dir):
    out = tmp_path_factory.mktemp("export") / "runs"
    # 2 epochs of 16 steps; an eval and then a checkpoint at each epoch end
    fields = {"data.max_train_samples": 64, "train.max_steps": "null", "train.epochs": 2, "train.lr": 5e-4,
              "train.save_strategy": "epoch", "train.logging_steps": 4}  # fmt: skip
    result = ftlaunch("submit", MRPC_RECIPE, "--local", *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **fields))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return only_run_dir(out)


def score(model_dir: Path, validation: Path, rows: int) -> dict:
    """Independent of ftlaunch: plain transformers, one row at a time."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    data = [json.loads(line) for line in validation.read_text().splitlines()[:rows]]
    with torch.no_grad():
        preds = [int(model(**tokenizer(r["sentence1"], r["sentence2"], truncation=True, max_length=128,
                                       return_tensors="pt")).logits.argmax(-1)) for r in data]  # fmt: skip
    labels = [r["label"] for r in data]
    return {"validation_accuracy": accuracy_score(labels, preds), "validation_f1": f1_score(labels, preds)}


@pytest.mark.parametrize("which", ["latest", "best", "final"])
def test_exported_model_reproduces_the_reported_metric(run_with_checkpoints, mrpc_dir, tmp_path, which):
    out = tmp_path / f"export-{which}"
    result = ftlaunch("collect", run_with_checkpoints, "--export", out, "--from", which, "--no-write")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    info = json.loads((out / "ftlaunch.json").read_text())
    evals = {r["step"]: r["metrics"] for r in read_records(run_with_checkpoints, "eval") if r["rank"] == 0}
    step = info.get("step", max(evals))
    if which == "best":
        assert evals[step]["validation_accuracy"] == max(m["validation_accuracy"] for m in evals.values())
    else:
        assert step == max(evals)  # latest checkpoint and final model: the last step
    reported = evals[step]
    scored = score(out, mrpc_dir / "validation.jsonl", rows=51)
    assert scored["validation_accuracy"] == pytest.approx(reported["validation_accuracy"], abs=1 / 51 + 1e-9)
    assert scored["validation_f1"] == pytest.approx(reported["validation_f1"], abs=0.03)


def test_export_never_overwrites_and_explains_what_is_missing(run_with_checkpoints, tmp_path):
    existing = tmp_path / "taken"
    existing.mkdir()
    again = ftlaunch("collect", run_with_checkpoints, "--export", existing, "--no-write")
    assert again.returncode == 2 and "already exists; exports never overwrite" in again.stderr
    assert list(existing.iterdir()) == []
    no_metric = ftlaunch("collect", run_with_checkpoints, "--export", tmp_path / "x", "--from", "best",
                         "--metric", "validation_pearson", "--no-write")  # fmt: skip
    assert no_metric.returncode == 2 and "validation_pearson" in no_metric.stderr
