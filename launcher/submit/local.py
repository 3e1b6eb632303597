"""Local runs: N node agents on this host (machine ranks 0..N-1 on 127.0.0.1), supervised.

Each node's output goes to run_dir/logs/node-N.log; node 0's is also echoed here. When one node
fails, the others are stopped at once and the error names the node, the rank and the log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from rich.console import Console

from launcher.errors import JobFailed
from launcher.plan import Plan
from launcher.run.node import EXIT_RESUMABLE, node_status_path
from launcher.train.preemption import read_requeue_marker

STOP_GRACE_S = 40  # after a hard stop the node agent gives its ranks 30 s


def _echo(stream, log_file, console: Console) -> None:
    for raw in iter(stream.readline, b""):
        log_file.write(raw)
        log_file.flush()
        console.out(raw.decode(errors="replace").rstrip("\n"), highlight=False)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Hard stop (another node failed): SIGINT makes a node agent stop its ranks at once."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def log_tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def _node_status(plan: Plan, node: int) -> dict:
    try:
        return json.loads(node_status_path(plan.run_dir, node).read_text())
    except (OSError, ValueError):
        return {}


def failure_message(plan: Plan, node: int, returncode: int) -> str:
    status = _node_status(plan, node)
    log = Path(plan.run_dir) / "logs" / f"node-{node}.log"
    reason = status.get("error") or f"node {node} exited with code {returncode}"
    if status.get("output_tail"):  # a user's own script: its last lines, not the launcher's report
        shown = "\n".join("    " + line for line in status["output_tail"])
        return f"{reason}\n  log: {log}\n  last lines of its output:\n{shown}"
    return f"{reason}\n  log: {log}\n  last lines:\n{log_tail(log)}"


ROOT_CAUSE_WAIT_S = 3.0  # after a node fails: how long the others get to fail too, before they are stopped


def root_cause(plan: Plan, procs: list[subprocess.Popen], failed: list[tuple[int, int]]) -> tuple[int, int]:
    """The failed node to blame. A node whose rank only lost its peer fails a moment after the node
    that really failed, often within the same poll: give the others a moment, then prefer a node
    whose error is its own over one that lost a peer, and the earliest among those."""
    deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    codes = [proc.poll() for proc in procs]
    failed = [(node, code) for node, code in enumerate(codes) if code not in (None, 0, EXIT_RESUMABLE)] or failed

    def blame(item: tuple[int, int]) -> tuple[bool, float]:
        status = _node_status(plan, item[0])
        lost_peer = bool(status.get("peer_lost")) or "lost a peer" in str(status.get("error", ""))
        return lost_peer, float(status.get("time", float("inf")))

    return min(failed, key=blame)


def run_local(plan: Plan, console: Console, attempt_base: int = 0) -> int:
    run_dir = Path(plan.run_dir)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", FTL_ATTEMPT_BASE=str(attempt_base))
    procs: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    log_files = []
    for node in range(plan.nodes):
        log_file = (logs / f"node-{node}.log").open("ab")
        log_files.append(log_file)
        echo = node == 0
        proc = subprocess.Popen(
            plan.node_argv(node),
            stdout=subprocess.PIPE if echo else log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        procs.append(proc)
        if echo:
            thread = threading.Thread(target=_echo, args=(proc.stdout, log_file, console), daemon=True)
            thread.start()
            threads.append(thread)
    (run_dir / "job.json").write_text(
        json.dumps({"target": "local", "pids": [p.pid for p in procs], "started": time.time(),
                    "attempt": attempt_base}, indent=2) + "\n"  # fmt: skip
    )

    def request_stop(signum=None, _frame=None) -> None:
        # Graceful: every node's ranks finish the step, write a checkpoint and stop (resumable).
        console.print("[yellow]stop requested: the ranks checkpoint and stop (again to stop at once)[/]")
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, request_stop)
    failed: tuple[int, int] | None = None
    interrupts = 0
    try:
        while True:
            try:
                codes = [proc.poll() for proc in procs]
                bad = [(node, code) for node, code in enumerate(codes) if code not in (None, 0, EXIT_RESUMABLE)]
                if bad:
                    failed = root_cause(plan, procs, bad)
                    break
                if all(code is not None for code in codes):
                    break
                time.sleep(0.2)
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts > 1:
                    _stop(procs)
                    raise
                request_stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if failed:
            _stop(procs)
        for thread in threads:
            thread.join(timeout=5)
        for log_file in log_files:
            log_file.close()
    if failed:
        node, code = failed
        raise JobFailed(failure_message(plan, node, code), exit_code=1)
    if any(proc.returncode == EXIT_RESUMABLE for proc in procs):
        marker = read_requeue_marker(run_dir) or {}
        console.print(f"[yellow]stopped[/] at step {marker.get('step', '?')} with a checkpoint; "
                      f"continue with: ftlaunch submit --resume {run_dir} --local")  # fmt: skip
        return EXIT_RESUMABLE
    results = run_dir / "results.json"
    if results.exists():
        final = json.loads(results.read_text()).get("final_eval") or {}
        metrics = {k: round(v, 4) for k, v in final.get("metrics", {}).items()}
        console.print(f"[bold green]done[/]: {metrics}  model: {run_dir / 'model'}")
    console.print(f"run dir: {run_dir}")
    return 0
