"""Status files (RUN/status/node-N.json, RUN/status/rank-R.json): written by node agents and
ranks as they go, read by the supervisor, `status`, `ls`, `logs -f` and the report.

A node goes joining -> running -> done | failed | stopped; a rank running -> done | failed | stopped.
A rank still "running" after its process is gone died without reporting (killed, out of memory).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from launcher.rundir.durable import read_json, write_json
from launcher.rundir.layout import REQUEUE_MARKER, STATUS_DIR, status_path

FINAL_STATES = ("done", "failed", "stopped")
FAILED_WORDS = ("failed", "error", "killed", "timeout")


def write_status(run_dir: str | Path, kind: str, index: int, payload: dict) -> None:
    write_json(status_path(run_dir, kind, index), payload)


def read_status(run_dir: str | Path, kind: str, index: int) -> dict | None:
    return read_json(status_path(run_dir, kind, index))


def read_statuses(run_dir: str | Path, kind: str) -> dict[int, dict]:
    """index -> content of every readable RUN/status/<kind>-N.json of the run's newest attempt, in
    index order. (A run resumed on fewer nodes leaves the files of nodes it no longer has: history,
    not state.)"""
    found = {}
    for path in (Path(run_dir) / STATUS_DIR).glob(f"{kind}-*.json"):
        index = path.stem.removeprefix(f"{kind}-")
        data = read_json(path)
        if index.isdigit() and data is not None:
            found[int(index)] = data
    newest = max((data.get("attempt", 0) for data in found.values()), default=0)
    return {index: data for index, data in sorted(found.items()) if data.get("attempt", 0) == newest}


def is_failed(data: dict) -> bool:
    for key in ("exit_code", "returncode"):
        if isinstance(data.get(key), int) and data[key] != 0:
            return True
    state = str(data.get("state", data.get("status", ""))).lower()
    return state in FAILED_WORDS or data.get("ok") is False


def state_word(data: dict) -> str:
    """done | failed | stopped | running | joining | ... for one status file."""
    return "failed" if is_failed(data) else str(data.get("state", "unknown")).lower()


def describe(data: dict) -> str:
    keys = ("state", "status", "host", "ok", "exit_code", "returncode", "message", "error")
    shown = {k: data[k] for k in keys if k in data}
    return ", ".join(f"{k}={v}" for k, v in (shown or data).items())[:300]


def nodes_state(run_dir: Path, nodes: int | None) -> str:
    """What the node status files say, for runs with no Slurm job (local, or unknown to Slurm)."""
    status = read_statuses(run_dir, "node")
    if not status:
        return "no status yet"
    failed = [r for r, d in status.items() if is_failed(d)]
    if failed:
        return f"FAILED (node {', '.join(map(str, failed))})"
    states = {r: state_word(d) for r, d in status.items()}
    if (not nodes or len(status) >= nodes) and all(s == "done" for s in states.values()):
        return "COMPLETED (status files)"
    shown = ", ".join(f"node {r} {s}" for r, s in sorted(states.items()))
    missing = f", {nodes - len(status)} node(s) not reported" if nodes and len(status) < nodes else ""
    return f"{shown}{missing} (status files)"


def nodes_finished(run_dir: Path, nodes: int | None) -> bool:
    """Every node's status file is final, or one says failed."""
    status = read_statuses(run_dir, "node")
    if any(is_failed(d) for d in status.values()):
        return True
    return bool(nodes) and len(status) >= nodes and all(state_word(d) in FINAL_STATES for d in status.values())


def write_requeue_marker(run_dir: Path, step: int, checkpoint: Path | None, signum: int | None) -> None:
    """The job stopped on request and can go on: from `checkpoint` (rank 0, after the checkpoint of a
    stop request in the training loop), or, stopped before or after the loop (a node agent), from
    the newest checkpoint there is (None: from the start; nothing was lost)."""
    name = signal.Signals(signum).name if signum else "a peer's request"
    write_json(
        Path(run_dir) / REQUEUE_MARKER,
        {"step": step, "checkpoint": str(checkpoint) if checkpoint else None, "signal": name, "time": time.time()},
    )


def read_requeue_marker(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / REQUEUE_MARKER)


def clear_requeue_marker(run_dir: Path) -> None:
    (Path(run_dir) / REQUEUE_MARKER).unlink(missing_ok=True)
