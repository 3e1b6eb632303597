"""The TPU code path for real, on XLA:CPU: `ftlaunch submit --local` with cluster.accelerator: tpu, run
from the torch-xla venv (tests/xla_venv.py builds .venv-xla/ when it is absent: about 3 minutes and
7 GB, since PyPI's torch 2.9 brings the CUDA libraries). PJRT_DEVICE=CPU gives an XLA device on
this CPU; every graph compiles as it would for a TPU, so the compile count proves the shapes static.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, REPO, local_mrpc_overrides, only_run_dir, read_records
from xla_venv import XlaVenvUnavailable, ensure_xla_venv

pytestmark = [pytest.mark.e2e, pytest.mark.xla]

# Graphs a fixed-shape run needs: the rendezvous at setup, the first training step (it creates the
# optimizer state), the steady step, the parameter checksum of logging steps, the evaluation step and
# the cut of its gathered last batch; a few to spare.
MAX_COMPILES = 8


@pytest.fixture(scope="session")
def xla_python() -> Path:
    try:
        return ensure_xla_venv()
    except XlaVenvUnavailable as exc:
        if exc.unreachable and not os.environ.get("CI"):
            pytest.skip(f"no XLA venv: {exc}")
        raise  # in CI, or a real install failure: the XLA tests must not silently vanish


def xla_submit(python: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, PJRT_DEVICE="CPU", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([str(python), "-m", "launcher", "submit", str(MRPC_RECIPE), "--local", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)  # fmt: skip


@pytest.mark.timeout(1800)
def test_minilm_two_epochs_static_shapes(xla_python, minilm_dir, mrpc_dir, tmp_path):
    """The real MiniLM on 68 real MRPC rows for 2 epochs (8 steps each: the ragged last 4 rows are
    dropped), evaluated on all 408 validation rows after each epoch: the second epoch compiles nothing,
    evaluation scores every row once, the loss stays on the device between logging steps, and the saved
    model scores the same in the main venv."""
    out = tmp_path / "runs"
    sets = local_mrpc_overrides(
        minilm_dir, mrpc_dir, out, **{"data.max_train_samples": 68, "data.max_eval_samples": "null",
        "train.max_steps": "null", "train.epochs": 2,
        "train.per_device_batch_size": 8, "train.logging_steps": 4, "train.save_strategy": "no",
        "cluster.accelerator": "tpu", "data.padding": "max_length"},
    )  # fmt: skip
    result = xla_submit(xla_python, *sets)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run_dir = only_run_dir(out)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert (plan["device"], plan["total_steps"], plan["xla"]["pjrt_device"]) == ("xla", 16, "CPU")
    assert (plan["xla"]["train_rows_dropped_per_epoch"], plan["xla"]["eval_filler_rows"]) == (4, 8)

    (setup,) = read_records(run_dir, "setup")
    assert setup["distributed_type"] == "DistributedType.XLA" and setup["device"] == "xla:0"
    assert setup["hub_kernels"] is False  # the kernels package has no XLA device (model.train() fails with them)
    evals = read_records(run_dir, "eval")
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    assert [e["rows"] for e in evals] == [408, 408]  # 25 full batches of 16 + 8 real rows and 8 filler

    # Static shapes: epoch 2 (with its evaluation) compiles nothing new, and the total stays small.
    after_epoch = [e["xla_compiles"] for e in evals]
    assert after_epoch[1] == after_epoch[0] <= MAX_COMPILES, after_epoch
    (summary,) = read_records(run_dir, "summary")
    assert summary["xla_compiles_by_epoch"] == {"1": after_epoch[0], "2": after_epoch[0]}
    assert summary["xla_compiles_after_first_epoch"] == 0 and summary["xla_leak_steps"] == []
    assert "warning: XLA compiled" not in result.stdout

    # No per-step host sync: a window of 4 steps transfers no more than its logging reads (loss,
    # token count, parameter checksum), the same in both epochs; one sync per step would add 4.
    train = {r["step"]: r for r in read_records(run_dir, "train")}
    assert sorted(train) == [4, 8, 12, 16]
    windows = [train[8]["xla_host_transfers"] - train[4]["xla_host_transfers"],
               train[16]["xla_host_transfers"] - train[12]["xla_host_transfers"]]  # fmt: skip
    assert windows[0] == windows[1] <= 3, windows

    report = json.loads((run_dir / "report.json").read_text())
    assert report["xla"]["compiles"] == after_epoch[0] and report["xla"]["after_first_epoch"] == 0
    assert "XLA compilations" in (run_dir / "report.md").read_text()

    # The saved model, loaded by the main venv's torch (no XLA), scores the reported metrics.
    reported = json.loads((run_dir / "results.json").read_text())["final_eval"]["metrics"]
    scored = score_in_this_venv(run_dir / "model", mrpc_dir / "validation.jsonl")
    assert abs(scored["accuracy"] - reported["validation_accuracy"]) <= 1 / 408
    assert abs(scored["f1"] - reported["validation_f1"]) <= 0.005
    assert abs(scored["loss"] - reported["validation_loss"]) < 1e-3


def score_in_this_venv(model_dir: Path, validation: Path) -> dict:
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [json.loads(line) for line in validation.read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            batch = tokenizer([r["sentence1"] for r in chunk], [r["sentence2"] for r in chunk], truncation=True,
                              max_length=128, padding=True, return_tensors="pt")  # fmt: skip
            logits.append(model(**batch).logits.float())
    logits = torch.cat(logits)
    labels = torch.tensor([r["label"] for r in rows])
    predictions = logits.argmax(-1)
    return {"accuracy": accuracy_score(labels, predictions), "f1": f1_score(labels, predictions),
            "loss": float(torch.nn.functional.cross_entropy(logits, labels))}  # fmt: skip


@pytest.mark.timeout(1800)
def test_dynamic_padding_trips_the_compile_guard(xla_python, tiny_model_dir, mrpc_dir, tmp_path):
    """Dynamic padding on XLA:CPU (allowed there so that its cost can be seen): batch lengths not seen
    in the first epoch compile new graphs in the second, and the guard names the steps."""
    out = tmp_path / "runs"
    sets = local_mrpc_overrides(
        tiny_model_dir, mrpc_dir, out, **{"data.max_train_samples": 32, "data.max_eval_samples": 16,
        "train.max_steps": "null", "train.epochs": 2, "train.per_device_batch_size": 8, "train.logging_steps": 4,
        "train.save_strategy": "no", "cluster.accelerator": "tpu", "data.padding": "dynamic"},
    )  # fmt: skip
    result = xla_submit(xla_python, *sets)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    run_dir = only_run_dir(out)
    (summary,) = read_records(run_dir, "summary")
    assert summary["xla_compiles_after_first_epoch"] > 0 and summary["xla_leak_steps"], summary
    assert all(5 <= step <= 8 for step in summary["xla_leak_steps"])  # epoch 2 is steps 5-8
    first = summary["xla_leak_steps"][0]
    assert f"and step {first}, in epoch 2" in result.stdout, result.stdout[-3000:]
    assert f"after the first epoch, at steps {', '.join(map(str, summary['xla_leak_steps']))}" in result.stdout
    assert "shapes are NOT static" in (run_dir / "report.md").read_text()
