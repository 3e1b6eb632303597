"""Checks made before anything is written or launched, the same for a dry run (which reports them)
and a real submit (which stops on them): the scheduler the job goes to answers, the trackers can
log, and what the job needs exists where it will run. Each problem is one line naming the recipe field (or the tool)
and what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from launcher.hfcache import OFFLINE_ENV
from launcher.recipe.schema import Recipe

SLURM_QUERY_TIMEOUT_S = 30
_NO_CONFIG = ("Could not establish a configuration source", "fetch_config", "Unable to process configuration file")


def preflight(recipes: list[Recipe], recipe_path: str | None, target: str, check_cache: bool = True) -> list[str]:
    """Every problem that would stop this submission (a sweep: its points' recipes, each model and
    dataset checked once)."""
    problems = slurm_reachable() if target == "slurm" else gcloud_available() if target == "tpu" else []
    if problems:  # nothing to submit to from here: nothing else matters yet
        return problems
    seen_trackers = set()
    for recipe in recipes:
        if recipe.entrypoint is None and target != "tpu" and repr(recipe.train.report_to) not in seen_trackers:
            seen_trackers.add(repr(recipe.train.report_to))
            problems += _tracker_problems(recipe, target)
    if check_cache and target != "tpu":  # TPU VMs have their own disks (and the Hub): nothing of this host's to check
        seen = set()
        for recipe in recipes:
            key = (recipe.model, recipe.data) if recipe.entrypoint is None else None
            if key is None or repr(key) in seen:
                continue
            seen.add(repr(key))
            problems += [p for p in needs_available(recipe, recipe_path or "RECIPE", target) if p not in problems]
    return problems


def slurm_reachable() -> list[str]:
    """sbatch is on PATH and the controller answers (one `sinfo` query)."""
    from launcher.submit.slurm import NO_SBATCH

    if shutil.which("sbatch") is None:
        return [NO_SBATCH]
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                                timeout=SLURM_QUERY_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return [f"sinfo did not answer within {SLURM_QUERY_TIMEOUT_S} s: is slurmctld up?"]
    if result.returncode == 0:
        return []
    said = " ".join(result.stderr.split())
    if any(marker in said for marker in _NO_CONFIG):
        conf = os.environ.get("SLURM_CONF")
        where = f"SLURM_CONF={conf} cannot be read" if conf else "SLURM_CONF is not set"
        return [f"no Slurm configuration found ({where}; no /etc/slurm/slurm.conf, no configless DNS record): "
                "set SLURM_CONF or run on a login node of the cluster"]  # fmt: skip
    return [f"Slurm does not answer (sinfo: {said[:200] or f'exit {result.returncode}'}): is slurmctld up?"]


def gcloud_available() -> list[str]:
    from launcher.submit.tpu_pod import NO_GCLOUD

    return [] if shutil.which("gcloud") else [NO_GCLOUD]


def _tracker_problems(recipe: Recipe, target: str) -> list[str]:
    """The ranks run this interpreter unless a container runs them (whose libraries only it knows)."""
    if target == "slurm" and recipe.cluster.container is not None:
        return []
    from launcher.trackers import tracker_problems

    return tracker_problems(list(recipe.train.report_to))


def needs_available(recipe: Recipe, recipe_path: str, target: str) -> list[str]:
    """Local model dirs exist for every target. Hub models and datasets must be in the local cache where
    the job will be offline: always on Slurm (compute nodes), locally when HF_HUB_OFFLINE is set here."""
    from launcher.submit.prefetch import check_offline, local_problems

    offline_here = any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in OFFLINE_ENV)
    if target == "slurm" or offline_here:
        return check_offline(recipe, recipe_path)
    return local_problems(recipe)
