"""Checkpoints, resume and preemption: a stopped run resumes mid-epoch and ends exactly where an
uninterrupted run ends (fp32, same seed); a damaged checkpoint is skipped; on real Slurm a USR2
(the preemption warning) checkpoints, requeues and resumes the job."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir, read_records
from launcher.rundir.checkpoints import latest_valid, verify
from launcher.train.checkpoint import ResumeError, recipe_fingerprint, start_position

# 96 rows, batch 4 x 2 processes: 12 steps per epoch, 2 epochs = 24 steps; a checkpoint every 5.
FIELDS = {"data.max_train_samples": 96, "train.max_steps": "null", "train.epochs": 2,
          "train.save_strategy": "steps", "train.save_steps": 5, "train.save_total_limit": 3}  # fmt: skip
TOTAL = 24

# every test here trains (or reads what a real run trained); runs are compared bit for bit
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread_per_rank")]


def final_state(run_dir: Path) -> tuple[dict, list[float]]:
    metrics = json.loads((run_dir / "results.json").read_text())["final_eval"]["metrics"]
    checksums = sorted(r["param_checksum"] for r in read_records(run_dir, "train") if r["step"] == TOTAL)
    return metrics, checksums


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, mrpc_dir, one_thread_per_rank):
    out = tmp_path_factory.mktemp("uninterrupted") / "runs"
    result = ftlaunch("submit", MRPC_RECIPE, "--local", "--procs-per-node", "2",
                      *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **FIELDS))  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return only_run_dir(out)


def interrupt(out: Path, model_dir: Path, mrpc_dir: Path, after_records: int) -> tuple[Path, int]:
    """Start a local 2-process run, SIGTERM the launcher once rank 0 logged `after_records` steps."""
    args = local_mrpc_overrides(model_dir, mrpc_dir, out, **FIELDS)
    job = subprocess.Popen([sys.executable, "-m", "launcher", "submit", str(MRPC_RECIPE), "--local",
                            "--procs-per-node", "2", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=REPO)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and job.poll() is None:
        runs = [p for p in out.glob("*") if p.is_dir() and not p.name.startswith(".")] if out.exists() else []
        if runs and sum(r["rank"] == 0 for r in read_records(runs[0], "train")) >= after_records:
            job.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = job.communicate(timeout=180)
    assert job.returncode == 75, output[-3000:]  # stopped with a checkpoint, resumable
    return only_run_dir(out), job.returncode


def test_stopped_run_resumes_mid_epoch_and_ends_like_an_uninterrupted_run(tmp_path, tiny_model_dir, mrpc_dir,
                                                                          uninterrupted):  # fmt: skip
    stop_after = random.Random().randint(2, 9)
    run_dir, _ = interrupt(tmp_path / "runs", tiny_model_dir, mrpc_dir, stop_after)
    marker = json.loads((run_dir / "status" / "requeue").read_text())
    stopped_at = marker["step"]
    assert 0 < stopped_at < TOTAL, f"stopped after record {stop_after}"
    assert Path(marker["checkpoint"]).name == f"step-{stopped_at:08d}"

    resumed = ftlaunch("submit", "--resume", run_dir, "--local")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {run_dir} from step {stopped_at}" in resumed.stdout
    assert final_state(run_dir) == final_state(uninterrupted), f"stopped at step {stopped_at}"

    for rank in (0, 1):
        train = [r for r in read_records(run_dir, "train") if r["rank"] == rank]
        assert sorted(r["step"] for r in train) == list(range(1, TOTAL + 1)), "a step is missing or duplicated"
        assert {r["attempt"] for r in train if r["step"] > stopped_at} == {1}
    resume = [r for r in read_records(run_dir, "resume")]
    assert {(r["rank"], r["step"]) for r in resume} == {(0, stopped_at), (1, stopped_at)}
    assert not (run_dir / "status" / "requeue").exists()
    status = ftlaunch("status", run_dir)
    assert status.returncode == 0 and "restarts 1, last checkpoint at step 20" in status.stdout, status.stdout


def test_truncated_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, tiny_model_dir, mrpc_dir,
                                                                     uninterrupted):  # fmt: skip
    run_dir, _ = interrupt(tmp_path / "runs", tiny_model_dir, mrpc_dir, after_records=7)
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    newest, previous = checkpoints[-1], checkpoints[-2]
    weights = newest / "state" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a file cut in half

    resumed = ftlaunch("submit", "--resume", run_dir, "--local")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    log = (run_dir / "logs" / "node-0.log").read_text()
    assert f"skipping checkpoint {newest.name}: model.safetensors is" in log
    assert f"resumed from {previous.name}" in log
    assert final_state(run_dir) == final_state(uninterrupted)


def test_damaged_checkpoints_are_told_apart(tmp_path, uninterrupted):
    import shutil

    good = sorted((uninterrupted / "checkpoints").glob("step-*"))[-1]
    manifest, problem = verify(good)
    assert problem is None and manifest["step"] == 20 and manifest["world_size"] == 2

    run = tmp_path / "run"
    shutil.copytree(uninterrupted / "checkpoints", run / "checkpoints")
    older, newer = sorted((run / "checkpoints").glob("step-*"))[-2:]
    (newer / "manifest.json").unlink()
    assert verify(newer) == (None, "no manifest.json")
    with pytest.warns(UserWarning, match=f"skipping checkpoint {newer.name}: no manifest.json"):
        assert latest_valid(run)[0] == older
    (older / "state" / "random_states_1.pkl").unlink()  # rank 1's RNG state
    assert verify(older)[1] == "random_states_1.pkl is missing"


def test_a_checkpoint_moves_to_another_world_size_only_with_its_global_batch(uninterrupted):
    from launcher.recipe import load_resolved

    checkpoint = sorted((uninterrupted / "checkpoints").glob("step-*"))[-1]
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    recipe = load_resolved(uninterrupted / "recipe.yaml")
    fingerprint = recipe_fingerprint(recipe)
    assert (manifest["world_size"], manifest["effective_batch"]) == (2, 8)  # 4 per device x 2 processes
    same = start_position(manifest, checkpoint, 2, fingerprint, 8, "ddp")
    assert (same.step, same.epoch, same.batches) == (manifest["step"], manifest["epoch"], manifest["batches"])
    alone = start_position(manifest, checkpoint, 1, fingerprint, 8, "ddp")  # one process, accumulation 2
    assert alone.batches == manifest["global_batches"] == 2 * manifest["batches"]
    with pytest.raises(ResumeError, match="with global batch 8, this job has 1 with 16: the global batch must stay"):
        start_position(manifest, checkpoint, 1, fingerprint, 16, "ddp")
    with pytest.raises(ResumeError, match="DeepSpeed ZeRO shards of 2 ranks, this job has 1"):
        start_position(manifest, checkpoint, 1, fingerprint, 8, "deepspeed")
    changed = recipe.model_copy(update={"train": recipe.train.model_copy(update={"lr": 1e-3})})
    with pytest.raises(ResumeError, match="different recipe"):
        start_position(manifest, checkpoint, 2, recipe_fingerprint(changed), 8, "ddp")
    # what may change on resume: where it runs, how often it saves, and the accumulation a layout needs
    moved = recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update={"nodes": 2}),
                                      "train": recipe.train.model_copy(update={"save_steps": 50,
                                                                               "gradient_accumulation_steps": 2})})  # fmt: skip
    assert recipe_fingerprint(moved) == fingerprint


def test_resume_refuses_runs_that_cannot_continue(tmp_path, uninterrupted):
    finished = ftlaunch("submit", "--resume", uninterrupted, "--local")
    assert finished.returncode == 2 and "already finished" in finished.stderr
    nothing = ftlaunch("submit", "--resume", tmp_path, "--local")
    assert nothing.returncode == 2 and "not an ftlaunch run dir" in nothing.stderr
    both = ftlaunch("submit", "--resume", uninterrupted, "--local", "--set", "train.lr=1e-3")
    assert both.returncode == 2 and "--resume RUN continues that run: no recipe, --set" in both.stderr


@pytest.mark.slurm
@pytest.mark.e2e
def test_slurm_preemption_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path, tiny_model_dir, mrpc_dir,
                                                           uninterrupted, capsys, monkeypatch):  # fmt: skip
    """2 nodes x 1 process on the real cluster; Slurm's preemption warning (USR2 to the job's steps,
    as --signal=USR2@N delivers it) makes the ranks checkpoint, the batch script requeues the job,
    the requeued job resumes and ends exactly like the uninterrupted local 2-process run."""
    from test_slurm import submit, wait_final, wait_state

    monkeypatch.delenv("FTL_PYTHON", raising=False)
    sets = local_mrpc_overrides(tiny_model_dir, mrpc_dir, tmp_path / "runs", **FIELDS,
                                **{"cluster.gpus_per_node": 0, "cluster.partition": "debug", "cluster.time": 10})  # fmt: skip
    job_id, run_dir = submit(capsys, str(MRPC_RECIPE), "--nodes", "2", *sets)
    deadline = time.monotonic() + 300
    while sum(r["rank"] == 0 for r in read_records(run_dir, "train")) < 3:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    signalled = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    wait_state(job_id, lambda s: s.state in ("PENDING", "REQUEUED") or s.final, timeout=120)
    requeued = time.monotonic()
    state = wait_final(job_id, timeout=600)
    finished = time.monotonic()
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted((run_dir / "logs").glob("*")))
    assert state == "COMPLETED", logs

    preempted = read_records(run_dir, "preempted")
    resumed = read_records(run_dir, "resume")
    assert {r["node"] for r in preempted} == {0, 1} and {r["attempt"] for r in preempted} == {0}, logs
    assert {r["attempt"] for r in resumed} == {1} and len({r["step"] for r in resumed}) == 1, logs
    assert 0 < resumed[0]["step"] < TOTAL
    assert final_state(run_dir) == final_state(uninterrupted)
    for rank in (0, 1):
        steps = sorted(r["step"] for r in read_records(run_dir, "train") if r["rank"] == rank)
        assert steps == list(range(1, TOTAL + 1))
    print(f"preempt -> requeued {requeued - signalled:.1f} s, -> finished {finished - signalled:.1f} s, "
          f"resumed at step {resumed[0]['step']}")


@pytest.mark.slurm
@pytest.mark.e2e
def test_two_slurm_nodes_match_one_node_with_the_same_global_batch(slurm_cluster, tmp_path, tiny_model_dir, mrpc_dir,
                                                                   uninterrupted, capsys, monkeypatch):  # fmt: skip
    """2 nodes x 1 process on the real cluster (ranks on n1 and n2, gloo over their network) against
    1 node x 2 processes locally: the same global batch, so the same parameters and metrics."""
    from test_slurm import submit, wait_final

    monkeypatch.delenv("FTL_PYTHON", raising=False)
    sets = local_mrpc_overrides(tiny_model_dir, mrpc_dir, tmp_path / "runs", **FIELDS,
                                **{"cluster.gpus_per_node": 0, "cluster.partition": "debug", "cluster.time": 10})  # fmt: skip
    job_id, run_dir = submit(capsys, str(MRPC_RECIPE), "--nodes", "2", *sets)
    assert wait_final(job_id, timeout=600) == "COMPLETED", (run_dir / "logs" / "node-0.log").read_text()[-3000:]
    hosts = {r["rank"]: r["host"] for r in read_records(run_dir, "setup")}
    assert hosts == {0: "n1", 1: "n2"} or len(set(hosts.values())) == 1  # netns: own hostnames; multi mode: shared
    assert final_state(run_dir) == final_state(uninterrupted)
