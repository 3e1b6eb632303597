"""Shell text for the commands each node runs."""

from __future__ import annotations

import json
import shlex

from launcher.plan import Plan


def node_command_lines(plan: Plan) -> list[str]:
    """One shell line per node (local runs: concrete; Slurm: the template the sbatch fills)."""
    if plan.target == "slurm":
        return [shlex.join(plan.node_argv("$SLURM_NODEID", "$HEAD", "$PORT"))]
    if plan.target == "tpu":  # every worker runs the same line; tpu_worker.sh sets its number
        return [shlex.join(plan.node_argv("$FTL_WORKER"))]
    return [shlex.join(plan.node_argv(rank)) for rank in range(plan.nodes)]


def launch_command_lines(plan: Plan) -> list[str]:
    if plan.target == "slurm":
        return [shlex.join(plan.launch_argv("$SLURM_NODEID", "$HEAD", "$PORT"))]
    if plan.target == "tpu":
        return [shlex.join(plan.launch_argv("$FTL_WORKER", plan.rendezvous.head, ""))]
    return [shlex.join(plan.launch_argv(rank, plan.rendezvous.head, plan.rendezvous.port)) for rank in range(plan.nodes)]


def render_plan_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2) + "\n"
