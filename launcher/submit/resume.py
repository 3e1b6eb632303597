"""`ftlaunch submit --resume RUN`: continue a stopped run in its own run dir from its newest valid
checkpoint, with the same plan (same nodes x processes: the checkpoint's data position and per-rank
RNG states are only valid for that world size)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from launcher.errors import UserError
from launcher.plan import Plan
from launcher.rundir.checkpoints import last_checkpoint_step


def next_attempt(run_dir: Path) -> int:
    """1 + the highest attempt any rank recorded (0 if none ran)."""
    highest = -1
    for path in (run_dir / "metrics").glob("rank-*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                highest = max(highest, int(json.loads(line).get("attempt", 0)))
            except (ValueError, AttributeError):
                continue
    return highest + 1


def resumable_plan(run_dir: Path, local: bool) -> tuple[Plan, int, int]:
    """(plan, checkpoint step, attempt number) or UserError saying why the run cannot be resumed."""
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (no plan.json)")
    plan = Plan.from_dict(json.loads(plan_path.read_text()))
    if (run_dir / "results.json").exists():
        raise UserError(f"--resume {run_dir}: this run already finished (results.json); submit the recipe again")
    step = last_checkpoint_step(run_dir)
    if step is None:
        raise UserError(f"--resume {run_dir}: no complete checkpoint to resume from; submit the recipe again")
    if plan.target == "tpu":
        raise UserError(f"--resume {run_dir}: resuming a TPU run is not supported yet; submit the recipe again")
    if local and plan.target != "local":
        raise UserError(f"--resume {run_dir}: this run was planned for Slurm; resume it without --local")
    if not local and plan.target == "local":
        raise UserError(f"--resume {run_dir}: this run was planned for this host; add --local")
    if local:
        from launcher.submit.prepare import free_port_pair

        # The original port pair may be taken by now.
        plan = dataclasses.replace(plan, rendezvous=dataclasses.replace(plan.rendezvous, port=free_port_pair()))
    return plan, step, next_attempt(run_dir)
