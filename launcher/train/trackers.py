"""The trackers of `train.report_to`, as accelerate's own tracker objects, so `accelerator.log` reaches
each of them (launcher.trackers says where each one writes and checks its library before submit).

Names: the W&B project and the MLflow experiment are the recipe's name, each run is named after
its run dir (the W&B run id too, so a requeued job continues the same W&B run).
"""

from __future__ import annotations

import os
from pathlib import Path

from launcher.recipe.schema import Recipe
from launcher.rundir.create import slug
from launcher.trackers import TENSORBOARD_DIR, missing_libraries, mlflow_defaults


def make_trackers(recipe: Recipe, run_dir: Path, is_main: bool) -> list:
    """One tracker per report_to entry; raises LookupError naming a tracker whose library is missing
    (accelerate would leave it out without a word)."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    report_to = list(recipe.train.report_to)
    missing = missing_libraries(report_to)
    if missing:
        raise LookupError(", ".join(missing))
    trackers = []
    for name in report_to:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("", str(run_dir / TENSORBOARD_DIR)))
        elif name == "wandb":
            trackers.append(WandBTracker(slug(recipe.name), name=run_dir.name, id=slug(run_dir.name), resume="allow",
                                         dir=os.environ.get("WANDB_DIR") or str(run_dir)))  # fmt: skip
        elif name == "mlflow":
            if is_main:  # only the main process logs; the others must not read a store they never use
                os.environ.update(mlflow_defaults(run_dir, os.environ))
            trackers.append(MLflowTracker(slug(recipe.name), run_name=run_dir.name,
                                          tags={"ftlaunch.run_dir": str(run_dir)}))  # fmt: skip
    return trackers


def tracker_config(recipe: Recipe, plan) -> dict:
    """The hyperparameters every tracker records once: the recipe's train section and the world."""
    values = {f"train.{k}": v for k, v in recipe.train.model_dump().items() if isinstance(v, (int, float, str, bool))}
    values.update(world_size=plan.world_size, nodes=plan.nodes, procs_per_node=plan.procs_per_node,
                  effective_batch_size=plan.effective_batch_size, device=plan.device, backend=plan.backend)  # fmt: skip
    if recipe.model is not None:
        values["model"] = recipe.model.name_or_path
    return {k: v for k, v in values.items() if v is not None}
