"""A run on another layout (nodes x processes) with the same optimisation: the per-device batch is
kept and gradient accumulation re-derived, so that every optimizer step still averages the same
`effective batch` of samples, in the same order.

    2 nodes x 1 process, batch 8, accumulation 1  ->  1 node x 1 process, batch 8, accumulation 2

Micro-batch m of an epoch holds the same rows on any layout (rank r of W takes micro-batches
r, r+W, ...), so an optimizer step sees the same rows; what differs is only the order in which
floating-point gradients are summed (all-reduce across ranks, or accumulation on one).
"""

from __future__ import annotations

from launcher.errors import UserError
from launcher.recipe.schema import Recipe


def workable_worlds(effective_batch: int, per_device: int) -> list[int]:
    """The world sizes (total processes) that keep `effective_batch` with this per-device batch."""
    micro_per_step = effective_batch // per_device
    return [world for world in range(1, micro_per_step + 1) if micro_per_step % world == 0]


def accumulation_for(effective_batch: int, per_device: int, world: int, field: str) -> int:
    """Gradient accumulation that keeps `effective_batch` over `world` processes; UserError (naming
    `field` and the layouts that work) when it cannot be kept."""
    if effective_batch % (per_device * world):
        worlds = ", ".join(map(str, workable_worlds(effective_batch, per_device)))
        raise UserError(
            f"{field}: the global batch {effective_batch} ({per_device} per device) cannot be split over {world} "
            f"process(es); layouts that keep it have {worlds} process(es) in all (nodes x processes per node)"
        )
    return effective_batch // (per_device * world)


def with_accumulation(recipe: Recipe, accumulation: int) -> Recipe:
    train = recipe.train.model_copy(update={"gradient_accumulation_steps": accumulation})
    return recipe.model_copy(update={"train": train})


def with_layout(recipe: Recipe, nodes: int | None, procs_per_node: int | None, gpus_per_node: int | None) -> Recipe:
    """The recipe with the cluster fields a new layout changes (None: unchanged)."""
    changes = {key: value for key, value in (("nodes", nodes), ("procs_per_node", procs_per_node),
                                              ("gpus_per_node", gpus_per_node)) if value is not None}  # fmt: skip
    return recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update=changes)})


def replan(recipe: Recipe, plan, host, nodes: int | None = None, procs_per_node: int | None = None,
           gpus_per_node: int | None = None, local_port: int | None = None, field: str = "--nodes"):  # fmt: skip
    """(recipe, plan) of a run moved to another layout, keeping its global batch. UserError where the
    layout cannot keep it, or where the checkpoint cannot move (DeepSpeed ZeRO shards per rank)."""
    from launcher.plan.plan import make_plan

    moved = with_layout(recipe, nodes, procs_per_node, gpus_per_node)
    rows = _split_rows(recipe, plan)
    probe = make_plan(moved, plan.target, plan.run_dir, host, rows, local_port)
    if (probe.nodes, probe.procs_per_node) == (plan.nodes, plan.procs_per_node):
        return moved, probe
    if plan.backend == "deepspeed":
        raise UserError(
            f"{field}: a DeepSpeed ZeRO checkpoint is sharded per rank; resume it on its own layout "
            f"({plan.nodes} node(s) x {plan.procs_per_node} process(es))"
        )
    if plan.entrypoint is not None:
        raise UserError(f"{field}: a run of your own script resumes with its own layout (its checkpoints are yours)")
    accumulation = accumulation_for(plan.effective_batch_size, plan.per_device_batch_size, probe.world_size, field)
    adapted = with_accumulation(moved, accumulation)
    new = make_plan(adapted, plan.target, plan.run_dir, host, rows, local_port)
    new.notes.append(
        f"layout changed from {plan.nodes} x {plan.procs_per_node} to {new.nodes} x {new.procs_per_node}: the global batch "
        f"{new.effective_batch_size} is kept with gradient accumulation {accumulation} (was {plan.gradient_accumulation_steps})"
    )
    return adapted, new


def _split_rows(recipe: Recipe, plan) -> dict[str, int]:
    """The row counts the original plan found (the data files are not read again)."""
    rows = {}
    if recipe.data is not None and plan.train_rows is not None:
        rows[recipe.data.train_split] = plan.train_rows
    if recipe.data is not None and recipe.data.eval_split and plan.eval_rows is not None:
        rows[recipe.data.eval_split] = plan.eval_rows
    return rows
