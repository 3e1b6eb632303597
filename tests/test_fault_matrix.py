"""The fault matrix: a local 2-node job is broken at one named point (launcher/faults.py) by one
fault, then resumed. Every cell checks what a user relies on:

- the job stops in bounded time and no process of the run is left (/proc is scanned for the run dir);
- the user gets one line saying what happened (and what to do, where the run cannot go on);
- after `ftlaunch submit --resume RUN --local` the final parameters (checksum) and metrics equal the
  uninterrupted run's, every step is logged once per rank in the merged metrics, and what was
  resumed from is a checkpoint that verifies (sizes and sha256) - never a partial one.

The job uses the defaults that matter: save_strategy epoch, eval_strategy epoch. 64 real MRPC rows,
batch 4 x 2 nodes: 8 steps per epoch, 3 epochs, checkpoints at steps 8, 16 and 24.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir, read_records
from launcher.faults import parse
from launcher.processes import mentioning
from launcher.rundir.layout import node_log_path

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread_per_rank")]

FIELDS = {"train.max_steps": "null", "train.epochs": 3, "data.max_train_samples": 64, "data.max_eval_samples": 51}
TOTAL = 24
STOP_LIMIT_S = 90  # a broken job must be gone within this


@pytest.fixture(scope="module")
def submit_args(tiny_model_dir, mrpc_dir, one_thread_per_rank):
    """`ftlaunch submit` arguments of the matrix's job, writing its run dir below `out`."""

    def args(out: Path) -> list[str]:
        return ["submit", str(MRPC_RECIPE), "--local", "--nodes", "2",
                *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **FIELDS)]  # fmt: skip

    return args


def final_state(run_dir: Path) -> tuple[dict, list[float]]:
    metrics = json.loads((run_dir / "results.json").read_text())["final_eval"]["metrics"]
    checksums = sorted(r["param_checksum"] for r in read_records(run_dir, "train") if r["step"] == TOTAL
                       and r["attempt"] == max(x["attempt"] for x in read_records(run_dir, "train")))  # fmt: skip
    return metrics, checksums


@pytest.fixture(scope="module")
def reference(tmp_path_factory, submit_args):
    out = tmp_path_factory.mktemp("uninterrupted") / "runs"
    result = ftlaunch(*submit_args(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run_dir = only_run_dir(out)
    steps = sorted({r["step"] for r in read_records(run_dir, "checkpoint")})
    assert steps == [8, 16, 24]
    return final_state(run_dir)


@dataclass
class Cell:
    name: str
    fault_spec: str  # FTL_FAULT
    deliver: str  # "self" (the spec acts) | "agent-kill" | "submit-TERM" | "submit-HUP" | "submit-KILL" | "cancel" | "cancel-now"
    node: int = 0  # whose agent is killed; whose pause is waited for (rank == node: 1 process per node)
    expect_exit: set[int] = field(default_factory=lambda: {1})
    expect_line: str = ""  # in the submit output (stderr + stdout)
    resumable: bool = True
    resume_from: int | set[int] | None = None  # the checkpoint step(s) the resumed attempt may load
    node_log_lines: tuple[str, ...] = ()  # in logs/node-{node}.log


CELLS = [
    Cell("tokenize x SIGTERM submit", "tokenize#1@0:pause", "submit-TERM", expect_exit={130},
         expect_line="stopped before the first checkpoint (nothing was trained yet)", resumable=False),
    Cell("tokenize x SIGKILL rank 1", "tokenize#1@1:kill", "self",
         expect_line="ftlaunch: job failed: node 1: rank 1 (pid", resumable=False),
    # every rank held before its first step: a stop then finds them all in the training loop
    Cell("before first step x SIGHUP submit", "train.before_first_step:pause", "submit-HUP", expect_exit={75},
         expect_line="stopped at step 1 with a checkpoint", resume_from=1),
    Cell("mid-epoch x SIGKILL rank 1", "train.step#12@1:kill", "self",
         expect_line="ftlaunch: job failed: node 1: rank 1 (pid", resume_from=8),
    # a native abort (std::terminate in a comm library): the rank's Python stack is in its node's log
    Cell("mid-epoch x SIGABRT rank 1", "train.step#12@1:abort", "self", node=1,
         expect_line="ftlaunch: job failed: node 1: rank 1 (pid", resume_from=8,
         node_log_lines=("Fatal Python error: Aborted", 'launcher/faults.py", line', "in _act", "in fit")),
    Cell("mid-epoch x SIGKILL agent 1", "train.step#12@1:pause", "agent-kill", node=1,
         expect_line="ftlaunch: job failed: node 1 exited with code -9 (killed by SIGKILL)", resume_from=12),
    Cell("mid-epoch x SIGKILL submit", "train.step#12@0:pause", "submit-KILL", expect_exit={-9}, resume_from=12),
    Cell("mid-epoch x ftlaunch cancel", "train.step#12@0:pause", "cancel", expect_exit={75},
         expect_line="stopped at step 12 with a checkpoint", resume_from=12),
    # --now: the ranks are stopped at once; the checkpoint of step 12 is there only if they were quicker
    Cell("mid-epoch x ftlaunch cancel --now", "train.step#12@0:pause", "cancel-now", expect_exit={75, 130},
         resume_from={8, 12}),
    Cell("evaluation x SIGKILL rank 0", "eval.batch#5@0:kill", "self",
         expect_line="ftlaunch: job failed: node 0: rank 0 (pid", resume_from=8),
    Cell("evaluation x SIGTERM submit", "eval.batch#5@0:pause", "submit-TERM", expect_exit={75},
         expect_line="with a checkpoint; continue with: ftlaunch submit --resume", resume_from=17),
    Cell("checkpoint staged x SIGKILL rank 0", "checkpoint.staged#2@0:kill", "self",
         expect_line="ftlaunch: job failed: node 0: rank 0 (pid", resume_from=8),
    Cell("checkpoint staged x SIGKILL submit", "checkpoint.staged#2@0:pause", "submit-KILL", expect_exit={-9}, resume_from=17),
    Cell("after final checkpoint x SIGKILL rank 0", "results@0:kill", "self",
         expect_line="continue from the checkpoint at step 24", resume_from=24),
    Cell("after final checkpoint x SIGTERM submit", "results@0:pause", "submit-TERM", expect_exit={75},
         expect_line="stopped at step 24 with a checkpoint", resume_from=24),
    Cell("model save x SIGKILL agent 0", "model.staged@0:pause", "agent-kill", node=0,
         expect_line="ftlaunch: job failed: node 0 exited with code -9 (killed by SIGKILL)", resume_from=24),
]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def processes_of(run_dir: Path) -> list[str]:
    found = []
    for pid in mentioning(str(run_dir)):
        try:
            found.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue
    return found


def break_the_run(cell: Cell, submit_args, out: Path, faults_dir: Path) -> tuple[Path, int, str, float]:
    """Start the job with the fault armed, deliver it, wait until nothing of the run is left.
    Returns (run dir, submit's exit code, its output, seconds from the fault point to the last process gone)."""
    env = dict(os.environ, FTL_FAULT=cell.fault_spec, FTL_FAULT_DIR=str(faults_dir))
    job = subprocess.Popen([sys.executable, "-m", "launcher", *submit_args(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env, start_new_session=True)  # fmt: skip
    (fault,) = parse(cell.fault_spec)
    reached = faults_dir / f"{fault.point}@{fault.rank or 0}.reached"
    try:
        if cell.deliver != "self":
            for rank in (0, 1) if fault.rank is None else (fault.rank,):
                wait_for((faults_dir / f"{fault.point}@{rank}.reached").exists, 240, f"{fault.point}@{rank}.reached")
            run_dir = only_run_dir(out)
            if cell.deliver == "agent-kill":
                agent = json.loads((run_dir / "status" / f"node-{cell.node}.json").read_text())["pid"]
                os.kill(agent, signal.SIGKILL)
            elif cell.deliver.startswith("cancel"):
                cancel = ftlaunch("cancel", run_dir, *(["--now"] if cell.deliver == "cancel-now" else []))
                assert cancel.returncode == 0 and f"cancelled local run {run_dir}" in cancel.stdout, cancel.stderr
            else:
                os.kill(job.pid, getattr(signal, "SIG" + cell.deliver.split("-")[1]))
        output, _ = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
    run_dir = only_run_dir(out)
    wait_for(lambda: not processes_of(run_dir), STOP_LIMIT_S, f"the run's processes to end: {processes_of(run_dir)}")
    assert reached.exists(), f"the fault point {reached.name} was never reached (exit {job.returncode}):\n{output[-4000:]}"
    return run_dir, job.returncode, output, time.time() - json.loads(reached.read_text())["time"]


def assert_resumed_equal(run_dir: Path, reference, cell: Cell) -> float:
    started = time.monotonic()
    resumed = ftlaunch("submit", "--resume", run_dir, "--local")
    seconds = time.monotonic() - started
    assert resumed.returncode == 0, cell.name + "\n" + resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert final_state(run_dir) == reference, cell.name
    assert not processes_of(run_dir), processes_of(run_dir)
    # every step once per rank in the merged records (what the report and curves are built from)
    merged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for rank in (0, 1):
        steps = [r["step"] for r in merged if r["type"] == "train" and r["rank"] == rank]
        assert steps == list(range(1, TOTAL + 1)), f"{cell.name}: rank {rank} logged {steps}"
    # the resumed attempt loaded the newest published checkpoint (never a staged, partial one), on every rank
    resumes = read_records(run_dir, "resume")
    allowed = cell.resume_from if isinstance(cell.resume_from, set) else {cell.resume_from}
    loaded = {r["checkpoint"] for r in resumes}
    assert {r["rank"] for r in resumes} == {0, 1} and len(loaded) == 1, (cell.name, resumes)
    assert loaded <= {f"step-{step:08d}" for step in allowed}, (cell.name, loaded)
    json.loads((run_dir / "results.json").read_text())
    json.loads((run_dir / "report.json").read_text())
    return seconds


MATRIX: list[dict] = []  # one row per cell, printed at the end of the module (-s) and kept for the notes


@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_fault_matrix(cell: Cell, tmp_path: Path, reference, submit_args):
    run_dir, code, output, stop_s = break_the_run(cell, submit_args, tmp_path / "runs", tmp_path / "faults")
    assert code in cell.expect_exit, f"{cell.name}: exit {code}\n{output[-3000:]}"
    if cell.expect_line:
        assert cell.expect_line in output, f"{cell.name}:\n{output[-3000:]}"
    assert "Traceback" not in output, f"{cell.name}: a traceback reached the console\n{output[-3000:]}"
    node_log = node_log_path(run_dir, cell.node).read_text() if cell.node_log_lines else ""
    for line in cell.node_log_lines:
        assert line in node_log, f"{cell.name}: {line!r} not in the node log\n{node_log[-3000:]}"
    # the console shows ftlaunch's own lines only: an error is one line (then where to look)
    errors = [line for line in output.splitlines() if line.startswith("ftlaunch: ")]
    assert len(errors) <= 1, errors
    leftovers = [p.name for p in (run_dir / "checkpoints").glob(".*")] if (run_dir / "checkpoints").exists() else []
    if not cell.resumable:
        refused = ftlaunch("submit", "--resume", run_dir, "--local")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.splitlines() == [
            f"ftlaunch: error: --resume {run_dir}: no complete checkpoint to resume from; submit the recipe again"
        ]
        MATRIX.append({"cell": cell.name, "exit": code, "stop_s": round(stop_s, 1), "resume_s": None, "equal": None})
        return
    resume_s = assert_resumed_equal(run_dir, reference, cell)
    MATRIX.append({"cell": cell.name, "exit": code, "stop_s": round(stop_s, 1), "resume_s": round(resume_s, 1),
                   "equal": True, "staging_left": leftovers})  # fmt: skip


def test_report_x_sigkill_of_the_agent_writing_it_loses_nothing(tmp_path: Path, reference, submit_args):
    """The report is derived data: killed while it is written, the run is still finished, the report
    files are whole or absent (never cut), and `ftlaunch collect` writes them."""
    cell = Cell("report x SIGKILL agent 0", "report.writing@0:kill", "self", expect_exit={0})
    run_dir, code, output, stop_s = break_the_run(cell, submit_args, tmp_path / "runs", tmp_path / "faults")
    assert code == 0, output[-3000:]
    assert f"while writing the report: ftlaunch collect {run_dir}" in output
    assert final_state(run_dir) == reference
    for name in ("report.json", "report.md", "curves.png"):
        assert not (run_dir / name).exists(), f"{name} written after the point the agent was killed at"
    merged = (run_dir / "metrics.jsonl").read_text()  # written whole just before the kill
    assert all(json.loads(line) for line in merged.splitlines())
    collected = ftlaunch("collect", run_dir)
    assert collected.returncode == 0, collected.stderr
    assert json.loads((run_dir / "report.json").read_text())["state"]["state"] == "done"
    refused = ftlaunch("submit", "--resume", run_dir, "--local")
    assert refused.returncode == 2 and "already finished" in refused.stderr
    MATRIX.append({"cell": cell.name, "exit": code, "stop_s": round(stop_s, 1), "resume_s": None, "equal": True})


def test_stop_request_after_a_rank_finished_leaves_a_finished_run(tmp_path: Path, reference, submit_args):
    """SIGTERM reaching the ranks once their work is done, as they write their "done" status (both held
    there, so that no rank is still working when it arrives): they end as done (the request has nothing
    left to stop), the job is finished with exit 0, nothing is lost, and no rank looks as if it had died."""
    cell = Cell("rank done x SIGTERM submit", "rank.done:pause", "submit-TERM", expect_exit={0})
    run_dir, code, output, stop_s = break_the_run(cell, submit_args, tmp_path / "runs", tmp_path / "faults")
    assert code == 0, output[-3000:]
    assert "ftlaunch: " not in output and "Traceback" not in output, output[-3000:]
    for rank in (0, 1):  # the request did reach the paused ranks
        assert (tmp_path / "faults" / f"rank.done@{rank}.woken").exists(), rank
    assert final_state(run_dir) == reference
    statuses = [json.loads((run_dir / "status" / f"rank-{rank}.json").read_text())["state"] for rank in (0, 1)]
    assert statuses == ["done", "done"]
    assert not [n for n in (0, 1) if "Stopped" in node_log_path(run_dir, n).read_text()]
    refused = ftlaunch("submit", "--resume", run_dir, "--local")
    assert refused.returncode == 2 and "already finished" in refused.stderr
    MATRIX.append({"cell": cell.name, "exit": code, "stop_s": round(stop_s, 1), "resume_s": None, "equal": True})


def test_a_finished_rank_ends_well_while_a_native_thread_is_still_in_torch(tmp_path: Path, reference, submit_args):
    """Every rank ends with a thread still calling into torch, as gloo's worker threads are while they
    release the last collective's work. A rank that ended through Python's teardown would abort there
    (std::terminate, SIGABRT) after its work was done: each one ends without it, and nothing is lost."""
    faults_dir = tmp_path / "faults"
    result = ftlaunch(*submit_args(tmp_path / "runs"), env={"FTL_FAULT": "rank.exit:straggle",
                                                           "FTL_FAULT_DIR": str(faults_dir)})  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for rank in (0, 1):  # the thread was started in every rank
        assert (faults_dir / f"rank.exit@{rank}.reached").exists(), rank
    run_dir = only_run_dir(tmp_path / "runs")
    assert final_state(run_dir) == reference
    for node in (0, 1):
        log = node_log_path(run_dir, node).read_text()
        for sign in ("terminate called", "Fatal Python error", "ChildFailedError", "exitcode"):
            assert sign not in log, (node, sign, log[-3000:])


# ---------------------------------------------------------------- on the real Slurm dev cluster


@dataclass
class SlurmCell:
    name: str
    fault_spec: str
    deliver: str  # "usr2" (Slurm's preemption warning) | "scancel"
    resume_from: set[int]  # the checkpoint step(s) the next attempt may load


SLURM_CELLS = [
    SlurmCell("evaluation x USR2", "eval.batch#5@0:pause", "usr2", {17}),
    SlurmCell("checkpoint staged x USR2", "checkpoint.staged#2@0:pause", "usr2", {17}),
    SlurmCell("after final checkpoint x USR2", "results@0:pause", "usr2", {24}),
    # scancel: SIGTERM, then SIGKILL after the cluster's KillWait (5 s here): the checkpoint of the
    # stop request (step 12) may or may not be complete by then; the one before (8) always is
    SlurmCell("mid-epoch x scancel", "train.step#12@0:pause", "scancel", {8, 12}),
]


@pytest.mark.slurm
@pytest.mark.parametrize("cell", SLURM_CELLS, ids=[c.name for c in SLURM_CELLS])
def test_fault_matrix_on_slurm(cell: SlurmCell, slurm_cluster, tmp_path, reference, tiny_model_dir, mrpc_dir, capsys,
                               monkeypatch):  # fmt: skip
    """2 Slurm nodes x 1 process (bit-identical to the local 2-node reference). USR2 requeues the job
    by itself and the requeued attempt finishes; after scancel, `ftlaunch submit --resume RUN` does."""
    from test_slurm import submit, wait_final

    faults_dir = tmp_path / "faults"
    stopped = None
    monkeypatch.delenv("FTL_PYTHON", raising=False)
    monkeypatch.setenv("FTL_FAULT", cell.fault_spec)  # reaches the job through sbatch's --export=ALL
    monkeypatch.setenv("FTL_FAULT_DIR", str(faults_dir))
    sets = local_mrpc_overrides(tiny_model_dir, mrpc_dir, tmp_path / "runs", **FIELDS,
                                **{"cluster.gpus_per_node": 0, "cluster.partition": "debug", "cluster.time": 10})  # fmt: skip
    job_id, run_dir = submit(capsys, str(MRPC_RECIPE), "--nodes", "2", *sets)
    (fault,) = parse(cell.fault_spec)
    reached = faults_dir / f"{fault.point}@{fault.rank or 0}.reached"
    wait_for(reached.exists, 300, reached.name)
    faulted = time.monotonic()
    release = faults_dir / f"{fault.point}@{fault.rank or 0}.release"  # a later attempt passes the point
    woken = faults_dir / f"{fault.point}@{fault.rank or 0}.woken"
    # scancel returns before slurmd has signalled the step: released earlier, the paused rank could
    # go on a step or an evaluation before its stop request, and stop somewhere else
    if cell.deliver == "usr2":
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        wait_for(woken.exists, 60, woken.name)
        release.touch()
    else:
        subprocess.run(["scancel", job_id], check=True, timeout=30)
        wait_for(woken.exists, 60, woken.name)
        release.touch()
        assert wait_final(job_id, timeout=120) == "CANCELLED"
        wait_for(lambda: not processes_of(run_dir), STOP_LIMIT_S, f"the run's processes to end: {processes_of(run_dir)}")
        stopped = time.monotonic() - faulted
        monkeypatch.delenv("FTL_FAULT")
        from launcher.cli.main import main

        code = main(["submit", "--resume", str(run_dir)])
        out = capsys.readouterr().out
        assert code == 0, out
        job_id = json.loads((run_dir / "job.json").read_text())["job_id"]
    state = wait_final(job_id, timeout=600)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted((run_dir / "logs").glob("*")))
    assert state == "COMPLETED", logs
    finished = time.monotonic() - faulted
    assert final_state(run_dir) == reference, logs
    resumes = read_records(run_dir, "resume")
    assert {r["attempt"] for r in resumes} == {1}, logs
    steps = {int(r["checkpoint"].removeprefix("step-")) for r in resumes}
    assert len(steps) == 1 and steps <= cell.resume_from, (steps, logs)
    collected = ftlaunch("collect", run_dir)  # merged records: every step once per rank
    assert collected.returncode == 0, collected.stderr
    merged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for rank in (0, 1):
        assert [r["step"] for r in merged if r["type"] == "train" and r["rank"] == rank] == list(range(1, TOTAL + 1))
    assert not processes_of(run_dir)
    MATRIX.append({"cell": f"slurm: {cell.name}", "stop_s": round(stopped, 1) if stopped else None,
                   "finish_s": round(finished, 1), "resumed_from": sorted(steps), "equal": True})  # fmt: skip


@pytest.mark.slurm
def test_a_node_whose_slurmd_dies_mid_run_fails_cleanly_and_the_run_finishes(slurm_cluster, tmp_path, reference,
                                                                           tiny_model_dir, mrpc_dir, capsys,
                                                                           monkeypatch):  # fmt: skip
    """slurmd of n2 is killed while the job trains (rank 0 held at step 12 so the job is mid-run when
    Slurm notices): slurmctld declares n2 down after SlurmdTimeout, the job ends on both nodes (n2's
    ranks lose their peer and exit on their own, nothing is left), and once n2 is back the job
    (requeued by Slurm, or resubmitted with --resume) finishes equal to the uninterrupted run."""
    from launcher.cli.main import main
    from test_slurm import submit, wait_final, wait_state

    base = Path(slurm_cluster["base"])
    faults_dir = tmp_path / "faults"
    monkeypatch.delenv("FTL_PYTHON", raising=False)
    monkeypatch.setenv("FTL_FAULT", "train.step#12@0:pause")
    monkeypatch.setenv("FTL_FAULT_DIR", str(faults_dir))
    sets = local_mrpc_overrides(tiny_model_dir, mrpc_dir, tmp_path / "runs", **FIELDS,
                                **{"cluster.gpus_per_node": 0, "cluster.partition": "debug", "cluster.time": 10})  # fmt: skip
    job_id, run_dir = submit(capsys, str(MRPC_RECIPE), "--nodes", "2", *sets)
    wait_for((faults_dir / "train.step@0.reached").exists, 300, "step 12")
    slurmd_pid = int((base / "run" / "slurmd-n2.pid").read_text())
    killed = time.monotonic()
    os.kill(slurmd_pid, signal.SIGKILL)
    try:
        state = wait_state(job_id, lambda s: s.state != "RUNNING", timeout=180)
        (faults_dir / "train.step@0.release").touch()  # a later attempt passes step 12
        wait_for(lambda: not processes_of(run_dir), STOP_LIMIT_S, f"the run's processes to end: {processes_of(run_dir)}")
        stopped = time.monotonic() - killed
    finally:
        restart_slurmd(base, "n2", slurm_cluster["conf"])
    monkeypatch.delenv("FTL_FAULT")
    if wait_state(job_id, lambda s: s.final or s.state == "PENDING", timeout=60) != "PENDING":
        assert main(["submit", "--resume", str(run_dir)]) == 0, capsys.readouterr()
        job_id = json.loads((run_dir / "job.json").read_text())["job_id"]
    logs = lambda: "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"  # noqa: E731
                             for p in sorted((run_dir / "logs").glob("*")))  # fmt: skip
    assert wait_final(job_id, timeout=600) == "COMPLETED", logs()
    assert final_state(run_dir) == reference, logs()
    resumed = {r["checkpoint"] for r in read_records(run_dir, "resume")}
    assert resumed <= {"step-00000008", "step-00000012"} and len(resumed) == 1, (resumed, logs())
    MATRIX.append({"cell": f"slurm: slurmd of n2 killed mid-run ({state})", "stop_s": round(stopped, 1),
                   "finish_s": round(time.monotonic() - killed, 1), "resumed_from": sorted(resumed), "equal": True})


def restart_slurmd(base: Path, node: str, conf: str) -> None:
    """Start the node's slurmd again as slurm/dev/up.sh does (its own network and UTS namespace),
    and wait until Slurm has it back in service (ReturnToService=2)."""
    if Path(f"/run/netns/slurmlab-{node}").exists():
        command = ["nsenter", f"--net=/run/netns/slurmlab-{node}", "unshare", "--uts", "sh", "-c",
                   f"hostname {node} && exec slurmd -f {conf} -N {node}"]  # fmt: skip
    else:
        command = ["slurmd", "-f", conf, "-N", node]
    subprocess.run(command, check=True, timeout=60)
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True, timeout=30)

    def in_service() -> bool:
        state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True, timeout=30)
        return state.stdout.strip() in ("idle", "alloc", "mix")

    wait_for(in_service, 120, f"{node} back in service")


def test_zz_matrix_table():
    """Prints the matrix (pytest -s) after the cells ran; asserts that every cell recorded a row."""
    if not MATRIX:
        pytest.skip("no cell ran in this session")
    for row in MATRIX:
        print(json.dumps(row))
    assert len({row["cell"] for row in MATRIX}) == len(MATRIX)


