"""`ftlaunch submit --resume RUN [--nodes N] [--procs-per-node P]`: continue a stopped run in its own
run dir from its newest valid checkpoint, on its own layout or on another one that keeps its global
batch (launcher.plan.elastic): then the run dir's plan, configs and recipe are rewritten for the new
layout, and the old plan is kept in RUN/plans/ for the attempts that ran on it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from launcher.errors import UserError
from launcher.plan import Plan
from launcher.rundir.checkpoints import last_checkpoint_step
from launcher.rundir.durable import write_durable
from launcher.rundir.layout import PLANS_DIR, RECIPE_FILE


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


def resumable_plan(run_dir: Path, local: bool, layout: dict | None = None) -> tuple[Plan, int, int]:
    """(plan, checkpoint step, attempt number) or UserError saying why the run cannot be resumed.
    layout: {"nodes": N, "procs_per_node": P, "gpus_per_node": G}, any of them, to move the run."""
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
    attempt = next_attempt(run_dir)
    port = None
    if local:
        from launcher.submit.prepare import free_port_pair

        port = free_port_pair()  # the original port pair may be taken by now
    if layout:
        plan = move(run_dir, plan, layout, attempt, port)
    elif local:
        plan = dataclasses.replace(plan, rendezvous=dataclasses.replace(plan.rendezvous, port=port))
    return plan, step, attempt


def move(run_dir: Path, plan: Plan, layout: dict, attempt: int, port: int | None) -> Plan:
    """Re-plan the run for another layout and rewrite its files for it (the old plan goes to plans/)."""
    from launcher.hfcache import hf_cache_env
    from launcher.plan.elastic import replan
    from launcher.recipe import dump_recipe, load_resolved
    from launcher.render import render_files
    from launcher.submit.hostfacts import host_facts

    recipe = load_resolved(run_dir / RECIPE_FILE)
    recipe, moved = replan(recipe, plan, host_facts(), local_port=port, **layout)
    if (moved.nodes, moved.procs_per_node) == (plan.nodes, plan.procs_per_node):
        return moved
    write_durable(run_dir / PLANS_DIR / f"before-attempt-{attempt}.json", json.dumps(plan.to_dict(), indent=2) + "\n")
    cache_env = hf_cache_env() if moved.target == "slurm" else None
    header = f"# Moved by ftlaunch submit --resume to {moved.nodes} node(s) x {moved.procs_per_node} process(es) " \
             f"from attempt {attempt} on (the global batch kept)\n"  # fmt: skip
    files = {**render_files(moved, recipe, cache_env), RECIPE_FILE: header + dump_recipe(recipe)}
    for name, content in files.items():
        write_durable(run_dir / name, content)
    return moved
