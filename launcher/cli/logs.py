"""Print a run's logs: the batch script's output (logs/slurm-JOB.out) and every node's
(logs/node-N.log), or one node's with --node N; -f follows them until the job ends."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from launcher.errors import UserError

HELP = "print (or -f follow) a run's batch and per-node logs"
POLL_S = 0.5
STATE_EVERY_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", nargs="?", metavar="RUN", help="run dir or run name (default: the newest run)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output until the job ends")
    parser.add_argument("--node", type=int, metavar="N", help="only node N's log (logs/node-N.log)")
    parser.add_argument("--output-dir", default="runs", help="where run names are looked up (default: runs)")


def run(args: argparse.Namespace) -> int:
    from launcher.rundir.find import is_sweep_dir, resolve_run, sweep_runs

    run_dir = resolve_run(args.run_name, args.output_dir)
    if is_sweep_dir(run_dir):
        names = ", ".join(str(r) for r in sweep_runs(run_dir)[:3])
        raise UserError(f"{run_dir} is a sweep: pass one of its runs ({names}, ...)")
    if args.node is not None and args.node < 0:
        raise UserError(f"--node {args.node}: node indexes start at 0")
    files = lambda: log_files(run_dir, args.node)  # noqa: E731
    out = sys.stdout
    if not args.follow:
        found = files()
        if not found:
            print(f"{run_dir}: no logs yet ({_expected(args.node)})")
        for index, path in enumerate(found):
            if len(found) > 1 or args.node is None:
                out.write(("\n" if index else "") + f"==> {path.relative_to(run_dir)} <==\n")
            out.write(path.read_text(encoding="utf-8", errors="replace"))
        out.flush()
        return 0
    try:
        follow(run_dir, files, _done_check(run_dir), out)
    except KeyboardInterrupt:
        pass
    return 0


def _expected(node: int | None) -> str:
    return f"logs/node-{node}.log" if node is not None else "logs/slurm-*.out, logs/node-*.log"


def _node_index(path: Path) -> int:
    match = re.match(r"node-(\d+)\.log$", path.name)
    return int(match.group(1)) if match else -1


def log_files(run_dir: Path, node: int | None = None) -> list[Path]:
    logs = run_dir / "logs"
    if node is not None:
        path = logs / f"node-{node}.log"
        return [path] if path.is_file() else []
    batch = sorted(logs.glob("slurm-*.out"), key=lambda p: p.stat().st_mtime)
    nodes = sorted(logs.glob("node-*.log"), key=_node_index)
    return batch + nodes


def _done_check(run_dir: Path):
    """A function telling whether the run is over: its Slurm job in a final state (or unknown to
    Slurm), or for runs without a job, every node's status file written."""
    from launcher.rundir.durable import read_json
    from launcher.rundir.jobs import read_job_record
    from launcher.rundir.layout import PLAN_FILE
    from launcher.rundir.status import nodes_finished
    from launcher.submit.slurm import job_states

    record = read_job_record(run_dir)
    plan = read_json(run_dir / PLAN_FILE) or {}
    last = {"t": 0.0, "done": False}

    def done() -> bool:
        now = time.monotonic()
        if now - last["t"] < STATE_EVERY_S:
            return last["done"]
        last["t"] = now
        if record and record.get("job_id"):
            state = job_states([str(record["job_id"])]).states[str(record["job_id"])]
            last["done"] = state.state is None or state.final
        else:
            last["done"] = nodes_finished(run_dir, plan.get("nodes"))
        return last["done"]

    return done


def follow(run_dir: Path, files, done, out, poll_s: float = POLL_S) -> None:
    """tail -f over a changing set of files, until done() (then one last read)."""
    positions: dict[Path, int] = {}
    current: Path | None = None
    while True:
        finished = done()
        for path in files():
            try:
                with path.open("rb") as handle:
                    handle.seek(positions.get(path, 0))
                    chunk = handle.read()
            except OSError:
                continue
            if not chunk:
                continue
            positions[path] = positions.get(path, 0) + len(chunk)
            if path != current:
                out.write(("\n" if current else "") + f"==> {path.relative_to(run_dir)} <==\n")
                current = path
            out.write(chunk.decode("utf-8", errors="replace"))
            out.flush()
        if finished:
            return
        time.sleep(poll_s)
