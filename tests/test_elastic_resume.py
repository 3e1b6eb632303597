"""Resume anywhere: a job stopped on one layout (nodes x processes) goes on on another with the same
global batch, and ends where the uninterrupted run ends: the same metrics, parameters equal up to the
order in which gradients are summed (all-reduce across ranks, or accumulation on one), every row of
every epoch seen exactly once across the attempts.

96 real MRPC rows, batch 4 per device, global batch 8 (2 processes, or 1 with accumulation 2):
12 steps per epoch, 2 epochs, a checkpoint every 5 steps.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir, read_records

pytestmark = pytest.mark.e2e

FIELDS = {"data.max_train_samples": 96, "train.max_steps": "null", "train.epochs": 2,
          "train.save_strategy": "steps", "train.save_steps": 5, "train.save_total_limit": 3}  # fmt: skip
TOTAL = 24
ROWS_ENV = {"FTL_RECORD_ROWS": "1"}
# Measured (tests below, tiny BERT, 24 steps, fp32): after a 2x1 -> 1x1 move the largest parameter
# differs from the uninterrupted run's by about 1e-9 of the largest parameter (9.3e-10; 3.7e-9 for a
# 1x1-with-accumulation run from the start), after 1x2 -> 2x1 by 0 (the same all-reduce). A bound of
# 1e-6 leaves over two orders of magnitude; an accumulation window shifted by one micro-batch (what a
# resumed run does if accelerate's micro-batch count is not re-based) already changed the final
# validation loss by 3e-5.
PARAMETER_TOLERANCE = 1e-6


def submit_args(out: Path, model: Path, mrpc: Path, layout: list[str]) -> list[str]:
    return ["submit", str(MRPC_RECIPE), "--local", *layout, *local_mrpc_overrides(model, mrpc, out, **FIELDS)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, mrpc_dir) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "runs"
    result = ftlaunch(*submit_args(out, tiny_model_dir, mrpc_dir, ["--nodes", "2"]), env=ROWS_ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return only_run_dir(out)


def stop_midway(out: Path, model: Path, mrpc: Path, layout: list[str]) -> tuple[Path, int]:
    """Start the job, SIGTERM it after a random number of logged steps: it checkpoints and stops."""
    after = random.Random().randint(2, 20)
    job = subprocess.Popen([sys.executable, "-m", "launcher", *submit_args(out, model, mrpc, layout)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                           env={**os.environ, **ROWS_ENV})  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:
        runs = [p for p in out.glob("*") if p.is_dir()] if out.exists() else []
        if runs and sum(r["rank"] == 0 for r in read_records(runs[0], "train")) >= after:
            job.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = job.communicate(timeout=240)
    assert job.returncode == 75, output[-3000:]
    run_dir = only_run_dir(out)
    return run_dir, json.loads((run_dir / "status" / "requeue").read_text())["step"]


def parameters(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "model.safetensors")


def relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    largest = max(float(t.abs().max()) for t in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / largest


def rows_per_epoch(run_dir: Path, stopped_at: int) -> dict[int, Counter]:
    """epoch -> how often each row was trained on: the first attempt up to its checkpoint, the
    resumed one after it (what the first did past its checkpoint was done again)."""
    seen: dict[int, Counter] = {}
    for record in read_records(run_dir, "rows"):
        first = record["attempt"] == 0
        if (first and record["step"] <= stopped_at) or (not first and record["step"] > stopped_at):
            seen.setdefault(record["epoch"], Counter()).update(record["rows"])
    return seen


@pytest.mark.parametrize(
    "before, after",
    [(["--nodes", "2"], ["--nodes", "1"]), (["--procs-per-node", "2"], ["--nodes", "2", "--procs-per-node", "1"])],
    ids=["2x1 -> 1x1", "1x2 -> 2x1"],
)
def test_a_stopped_run_resumes_on_another_layout_and_ends_where_it_would_have(before, after, tmp_path, tiny_model_dir,
                                                                             mrpc_dir, uninterrupted):  # fmt: skip
    run_dir, stopped_at = stop_midway(tmp_path / "runs", tiny_model_dir, mrpc_dir, before)
    resumed = ftlaunch("submit", "--resume", run_dir, "--local", *after, env=ROWS_ENV)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["effective_batch_size"] == 8 and plan["world_size"] * plan["gradient_accumulation_steps"] == 2
    assert "the global batch 8 is kept with gradient accumulation" in resumed.stdout
    assert (run_dir / "plans" / "before-attempt-1.json").is_file()

    final = json.loads((run_dir / "results.json").read_text())["final_eval"]["metrics"]
    reference = json.loads((uninterrupted / "results.json").read_text())["final_eval"]["metrics"]
    assert final["validation_accuracy"] == reference["validation_accuracy"]
    assert final["validation_f1"] == reference["validation_f1"]
    assert final["validation_loss"] == pytest.approx(reference["validation_loss"], rel=1e-5)
    difference = relative_difference(parameters(run_dir), parameters(uninterrupted))
    print(f"{before} -> {after}: stopped at step {stopped_at}, largest parameter difference {difference:.3g} "
          "of the largest parameter")
    assert difference < PARAMETER_TOLERANCE

    epochs = rows_per_epoch(run_dir, stopped_at)
    assert sorted(epochs) == [0, 1]
    reference_rows = rows_per_epoch(uninterrupted, TOTAL)
    for epoch, counts in epochs.items():
        assert set(counts.values()) == {1} and len(counts) == 96, f"epoch {epoch}: a row seen twice or never"
        assert counts == reference_rows[epoch]  # and the rows are those the uninterrupted run saw
    report = json.loads((run_dir / "report.json").read_text())
    layouts = [(a["nodes"], a["procs_per_node"], a["from_step"]) for a in report["attempts"]]
    assert layouts[1][2] == stopped_at and layouts[0][:2] != layouts[1][:2], layouts
    status = ftlaunch("status", run_dir)
    assert "state  COMPLETED (status files)" in status.stdout and report["state"]["state"] == "done", status.stdout
    assert f"attempt 1: {layouts[1][0]} node(s) x {layouts[1][1]} process(es) from step {stopped_at}" in status.stdout


def test_a_layout_that_cannot_keep_the_global_batch_is_refused(tmp_path, tiny_model_dir, mrpc_dir):
    run_dir, _ = stop_midway(tmp_path / "runs", tiny_model_dir, mrpc_dir, ["--nodes", "2"])
    plan_before = (run_dir / "plan.json").read_bytes()
    refused = ftlaunch("submit", "--resume", run_dir, "--local", "--nodes", "1", "--procs-per-node", "3")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "ftlaunch: error: --nodes: the global batch 8 (4 per device) cannot be split over 3 process(es); "
        "layouts that keep it have 1, 2 process(es) in all (nodes x processes per node)"
    ]
    assert (run_dir / "plan.json").read_bytes() == plan_before and not (run_dir / "plans").exists()


@pytest.mark.slurm
def test_an_elastic_slurm_job_requeued_on_fewer_nodes_finishes_where_it_would_have(
    slurm_cluster, tmp_path, uninterrupted, tiny_model_dir, mrpc_dir, capsys, monkeypatch
):
    """2 nodes with cluster.min_nodes 1 (sbatch --nodes=1-2); n2 is drained, then the job gets Slurm's
    preemption warning: it checkpoints, requeues, starts again on n1 alone, re-plans for 1 node
    (accumulation 2) and ends like the uninterrupted 2-node run."""
    from test_slurm import submit, wait_final

    faults = tmp_path / "faults"
    monkeypatch.delenv("FTL_PYTHON", raising=False)
    for name, value in {"FTL_FAULT": "train.step#7@0:pause", "FTL_FAULT_DIR": str(faults), **ROWS_ENV}.items():
        monkeypatch.setenv(name, value)  # reach the job through sbatch's --export=ALL
    sets = local_mrpc_overrides(tiny_model_dir, mrpc_dir, tmp_path / "runs", **FIELDS,
                                **{"cluster.gpus_per_node": 0, "cluster.partition": "debug", "cluster.time": 10,
                                   "cluster.min_nodes": 1})  # fmt: skip
    job_id, run_dir = submit(capsys, str(MRPC_RECIPE), "--nodes", "2", *sets)
    assert "#SBATCH --nodes=1-2" in (run_dir / "sbatch.sh").read_text()
    deadline = time.monotonic() + 300
    while not (faults / "train.step@0.reached").exists():
        assert time.monotonic() < deadline, "step 7 never reached"
        time.sleep(0.1)
    drain = ["scontrol", "update", "NodeName=n2"]
    subprocess.run([*drain, "State=DRAIN", "Reason=ftlaunch-elastic-test"], check=True, timeout=30)
    try:
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        deadline = time.monotonic() + 60  # the warning reached the paused rank: it stops at step 7
        while not (faults / "train.step@0.woken").exists():
            assert time.monotonic() < deadline, "the USR2 warning never reached rank 0"
            time.sleep(0.1)
        (faults / "train.step@0.release").touch()
        state = wait_final(job_id, timeout=600)
    finally:
        subprocess.run([*drain, "State=RESUME"], capture_output=True, timeout=30)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted((run_dir / "logs").glob("*")))
    assert state == "COMPLETED", logs
    requeued = [r for r in read_records(run_dir, "setup") if r["attempt"] == 1]
    assert [r["world_size"] for r in requeued] == [1], logs  # one rank, on the one node Slurm gave
    plan = json.loads((run_dir / "plan.json").read_text())
    assert (plan["nodes"], plan["gradient_accumulation_steps"], plan["effective_batch_size"]) == (1, 2, 8)
    final = json.loads((run_dir / "results.json").read_text())["final_eval"]["metrics"]
    reference = json.loads((uninterrupted / "results.json").read_text())["final_eval"]["metrics"]
    assert (final["validation_accuracy"], final["validation_f1"]) == (reference["validation_accuracy"], reference["validation_f1"])
    assert relative_difference(parameters(run_dir), parameters(uninterrupted)) < PARAMETER_TOLERANCE
    stopped_at = min(r["step"] for r in read_records(run_dir, "resume"))
    for epoch, counts in rows_per_epoch(run_dir, stopped_at).items():
        assert set(counts.values()) == {1} and len(counts) == 96, f"epoch {epoch}"
