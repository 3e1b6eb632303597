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
from launcher.run.node import node_status_path

STOP_GRACE_S = 40  # the node agent gives its ranks 30 s after SIGTERM


def _echo(stream, log_file, console: Console) -> None:
    for raw in iter(stream.readline, b""):
        log_file.write(raw)
        log_file.flush()
        console.out(raw.decode(errors="replace").rstrip("\n"), highlight=False)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
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


def failure_message(plan: Plan, node: int, returncode: int) -> str:
    status_path = node_status_path(plan.run_dir, node)
    reason = None
    if status_path.exists():
        reason = json.loads(status_path.read_text()).get("error")
    log = Path(plan.run_dir) / "logs" / f"node-{node}.log"
    reason = reason or f"node {node} exited with code {returncode}"
    return f"{reason}\n  log: {log}\n  last lines:\n{log_tail(log)}"


def run_local(plan: Plan, console: Console) -> int:
    run_dir = Path(plan.run_dir)
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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
        json.dumps({"target": "local", "pids": [p.pid for p in procs], "started": time.time()}, indent=2) + "\n"
    )
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            bad = [(node, code) for node, code in enumerate(codes) if code not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(code == 0 for code in codes):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        if failed:
            _stop(procs)
        for thread in threads:
            thread.join(timeout=5)
        for log_file in log_files:
            log_file.close()
    if failed:
        node, code = failed
        raise JobFailed(failure_message(plan, node, code), exit_code=1)
    results = run_dir / "results.json"
    if results.exists():
        final = json.loads(results.read_text()).get("final_eval") or {}
        metrics = {k: round(v, 4) for k, v in final.get("metrics", {}).items()}
        console.print(f"[bold green]done[/]: {metrics}  model: {run_dir / 'model'}")
    console.print(f"run dir: {run_dir}")
    return 0
