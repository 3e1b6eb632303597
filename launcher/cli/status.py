"""Show where a run stands: its Slurm job state (squeue, then sacct; the job completion log where
accounting is off) and what its node status files say. RUN: a run dir, a run name under
--output-dir, or a sweep dir (one line per task); default: the newest run."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

HELP = "state of a run's Slurm job (or of every task of a sweep)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", nargs="?", metavar="RUN", help="run dir or run name (default: the newest run)")
    parser.add_argument("--output-dir", default="runs", help="where run names are looked up (default: runs)")


def run(args: argparse.Namespace) -> int:
    from launcher.rundir.find import expand, is_sweep_dir, resolve_run

    target = resolve_run(args.run_name, args.output_dir)
    runs = expand(target)
    if is_sweep_dir(target):
        print(f"sweep  {target}  ({len(runs)} runs)")
    for line in status_lines(runs):
        print(line)
    return 0


def status_lines(runs: list[Path]) -> list[str]:
    from launcher.rundir import status
    from launcher.rundir.info import run_info
    from launcher.submit.slurm import run_states

    infos = [run_info(r) for r in runs]
    report = run_states(infos)
    lines = []
    for info in infos:
        point = " ".join(f"{k}={v}" for k, v in (info.point or {}).items())
        nodes = f"{info.nodes} node(s)" if info.nodes else "? nodes"
        lines.append(f"run    {info.run_dir}  ({info.name}, {info.target}, {nodes}{', ' + point if point else ''})")
        if info.job_id:
            state = report.states[info.job_id]
            source = f"  [{state.source}]" if state.source else ""
            lines.append(f"job    {info.job_id}: {state.describe()}{source}")
            if state.state is None:
                lines.append(f"files  {status.nodes_state(info.run_dir, info.nodes)}")
        elif info.target == "slurm":
            lines.append("job    not submitted (a dry run)")
        else:
            lines.append(f"state  {status.nodes_state(info.run_dir, info.nodes)}")
        if not (info.run_dir / "script" / "manifest.json").exists():  # a user's script has no checkpoints of ours
            lines.append(f"train  {progress_line(info.run_dir)}")
        for node, data in status.read_statuses(info.run_dir, "node").items():
            lines.append(f"node {node} {status.describe(data)}")
        lines.append(f"logs   ftlaunch logs {shlex.quote(str(info.run_dir))}")
    lines += [f"note   {note}" for note in report.notes]
    return lines


def progress_line(run_dir: Path) -> str:
    """Restarts (requeues and --resume) and the newest complete checkpoint."""
    from launcher.rundir.checkpoints import last_checkpoint_step
    from launcher.submit.resume import next_attempt

    from launcher.collect.records import read_records
    from launcher.collect.render import layouts_text
    from launcher.collect.report import attempt_layouts

    restarts = max(next_attempt(run_dir) - 1, 0)
    step = last_checkpoint_step(run_dir)
    checkpoint = f"last checkpoint at step {step}" if step is not None else "no checkpoint yet"
    moved = layouts_text(attempt_layouts(read_records(run_dir).records)) if restarts else None
    return f"restarts {restarts}, {checkpoint}" + (f"; {moved}" if moved else "")
