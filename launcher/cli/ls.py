"""List recent runs under an output dir, newest first, with their state (one squeue/sacct call
for all of them)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "recent runs under an output dir, newest first, with their state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="runs", help="where the runs are (default: runs)")
    parser.add_argument("-n", "--limit", type=int, default=20, help="show at most this many (default 20; 0: all)")
    parser.add_argument("--all", action="store_true", help="also the dry runs (*-dryrun-*)")


def run(args: argparse.Namespace) -> int:
    from launcher.rundir.find import created_at, is_dry_run, iter_runs
    from launcher.rundir.info import run_info
    from launcher.rundir.status import nodes_state
    from launcher.submit.slurm import run_states

    runs = iter_runs(args.output_dir, dry_runs=args.all)
    if args.limit:
        runs = runs[: args.limit]
    if not runs:
        print(f"no runs under {args.output_dir}/")
        return 0
    infos = [run_info(r) for r in runs]
    report = run_states(infos)
    rows = [("RUN", "CREATED", "TARGET", "NODES", "JOB", "STATE", "POINT")]
    for info in infos:
        if info.job_id:
            state = report.states[info.job_id].state or nodes_state(info.run_dir, info.nodes)
        elif is_dry_run(info.run_dir):
            state = "dry run"
        elif info.target == "slurm":
            state = "not submitted"
        else:
            state = nodes_state(info.run_dir, info.nodes)
        in_sweep = info.run_dir.parent.resolve() != Path(args.output_dir).resolve()
        name = f"{info.run_dir.parent.name}/{info.run_dir.name}" if in_sweep else info.run_dir.name
        rows.append((
            name,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created_at(info.run_dir))),
            info.target,
            str(info.nodes or "?"),
            info.job_id or "-",
            state,
            " ".join(f"{k}={v}" for k, v in (info.point or {}).items()) or "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for note in report.notes:
        print(f"note: {note}")
    return 0
