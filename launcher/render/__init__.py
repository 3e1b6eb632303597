"""Render: plan -> the text of every generated file (pure functions, nothing written here)."""

from __future__ import annotations

from collections.abc import Mapping

from launcher.plan import Plan
from launcher.recipe.schema import Recipe
from launcher.render.accelerate_config import render_accelerate_config
from launcher.render.commands import render_plan_json


def render_files(
    plan: Plan, recipe: Recipe | None = None, cache_env: Mapping[str, str] | None = None, facts=None
) -> dict[str, str]:
    """File name (relative to the run dir) -> content.

    Slurm target: with the recipe (its cluster section: partition, time, container, ...) also the
    batch script, sbatch.sh; `cache_env` is the Hugging Face cache paths the job exports
    (launcher.hfcache.hf_cache_env(): as resolved on the submitting host); `facts`
    (launcher.render.sbatch.ClusterFacts) what the submit learnt from Slurm and its shell.
    TPU target: with the recipe (setup lines, env) also the pod script and the worker script.
    DeepSpeed backend: with the recipe (max_grad_norm, offload) also deepspeed.json."""
    files = {
        "plan.json": render_plan_json(plan),
        "accelerate.yaml": render_accelerate_config(plan),
    }
    if plan.target == "slurm" and recipe is not None:
        from launcher.render.sbatch import SCRIPT_NAME, render_sbatch

        files[SCRIPT_NAME] = render_sbatch(plan, recipe, cache_env, facts)
    if plan.target == "tpu" and recipe is not None:
        from launcher.render.tpu_pod import render_tpu_files

        files.update(render_tpu_files(plan, recipe))
    if plan.backend == "deepspeed" and recipe is not None:
        from launcher.render.deepspeed_config import FILE_NAME, render_deepspeed_config

        files[FILE_NAME] = render_deepspeed_config(plan, recipe)
    return files
