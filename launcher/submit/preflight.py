"""Checks made before anything is written or launched, the same for a dry run (which reports them)
and a real submit (which stops on them): the scheduler the job goes to answers, the partition has
what the job asks for, the trackers can log, and what the job needs exists where it will run. Each
problem is one line naming the recipe field (or the tool), what the cluster offers and what to do.

Slurm is asked once per submit (`SlurmQuery`: one `sinfo` for every partition); the same answer
gives the sbatch script its defaults (--cpus-per-task), so what is checked is what is asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from launcher.hfcache import OFFLINE_ENV
from launcher.recipe.schema import Recipe
from launcher.render.sbatch import ClusterFacts, nccl_passthrough
from launcher.submit.slurm import PARTITION_QUERY, Partition, find_partition, memory_mb, parse_partitions, time_seconds

SLURM_QUERY_TIMEOUT_S = 30
_NO_CONFIG = ("Could not establish a configuration source", "fetch_config", "Unable to process configuration file")
UNCHECKED = ("not checked without an answer from Slurm: cluster.partition, its GPUs (GRES), cluster.time against "
             "its MaxTime, cluster.nodes, CPUs and memory per node; sbatch.sh asks for --cpus-per-task only where "
             "cluster.cpus_per_task says how many")  # fmt: skip


@dataclass
class SlurmAnswer:
    problems: list[str]  # why nothing can be submitted from here (no sbatch, no answer)
    partitions: list[Partition] | None  # None: no answer, or not one ftlaunch could read
    unchecked: list[str] = field(default_factory=list)  # what the checks could not look at, and why


class SlurmQuery:
    """The cluster's answer to one `sinfo` query, asked the first time a check or a default needs it
    and kept for the rest of the submit (a sweep's points included)."""

    def __init__(self) -> None:
        self._answer: SlurmAnswer | None = None

    def answer(self) -> SlurmAnswer:
        if self._answer is None:
            self._answer = _ask_slurm()
        return self._answer

    def facts_for(self, recipe: Recipe) -> ClusterFacts:
        """What the sbatch script takes from the answer: the recipe's partition's nodes (the fewest cores
        among those the job fits on), and the submitting shell's NCCL network settings."""
        nccl = nccl_passthrough(os.environ)
        partitions = self.answer().partitions
        partition = find_partition(partitions, recipe.cluster.partition) if partitions else None
        if partition is None:
            return ClusterFacts(nccl_env=nccl)
        gpus = recipe.cluster.gpus_per_node
        groups = [g for g in partition.fitting(gpus) if g.cpus is not None]
        if not groups:
            return ClusterFacts(partition=partition.name, nccl_env=nccl)
        # with part of a node's GPUs, the job's share of its cores; the smallest share fits every node
        group = min(groups, key=lambda g: g.cpus * gpus // g.gpus if gpus and g.gpus else g.cpus)
        return ClusterFacts(partition=partition.name, node_cpus=group.cpus, node_gpus=group.gpus, nccl_env=nccl)


def preflight(recipes: list[Recipe], recipe_path: str | None, target: str, check_cache: bool = True,
              slurm: SlurmQuery | None = None) -> list[str]:  # fmt: skip
    """Every problem that would stop this submission (a sweep: its points' recipes, each model, dataset
    and cluster section checked once)."""
    answer = (slurm or SlurmQuery()).answer() if target == "slurm" else None
    problems = list(answer.problems) if answer else gcloud_available() if target == "tpu" else []
    if problems:  # nothing to submit to from here: nothing else matters yet
        return problems
    seen: set[str] = set()
    for recipe in recipes:
        if answer and answer.partitions is not None and _first(seen, "cluster", recipe.cluster):
            problems += partition_problems(recipe, answer.partitions)
        if recipe.entrypoint is None and target != "tpu" and _first(seen, "trackers", recipe.train.report_to):
            problems += _tracker_problems(recipe, target)
        if check_cache and target != "tpu" and recipe.entrypoint is None and _first(seen, "needs", (recipe.model, recipe.data)):
            # TPU VMs have their own disks (and the Hub): nothing of this host's to check
            problems += [p for p in needs_available(recipe, recipe_path or "RECIPE", target) if p not in problems]
    return problems


def _first(seen: set[str], kind: str, value: object) -> bool:
    key = f"{kind}:{value!r}"
    if key in seen:
        return False
    seen.add(key)
    return True


def unchecked(target: str, slurm: SlurmQuery | None) -> list[str]:
    """What a dry run could not check (no answer from Slurm), to say beside the checks it made."""
    return slurm.answer().unchecked if target == "slurm" and slurm is not None else []


# ------------------------------------------------------------------------------ Slurm


def _ask_slurm() -> SlurmAnswer:
    """sbatch is on PATH and the controller answers one `sinfo` query for every partition."""
    from launcher.submit.slurm import NO_SBATCH

    if shutil.which("sbatch") is None:
        return SlurmAnswer([NO_SBATCH], None, [UNCHECKED])
    try:
        result = subprocess.run(PARTITION_QUERY, capture_output=True, text=True, timeout=SLURM_QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return SlurmAnswer([f"sinfo did not answer within {SLURM_QUERY_TIMEOUT_S} s: is slurmctld up?"], None, [UNCHECKED])
    if result.returncode != 0:
        said = " ".join(result.stderr.split())
        if any(marker in said for marker in _NO_CONFIG):
            conf = os.environ.get("SLURM_CONF")
            where = f"SLURM_CONF={conf} cannot be read" if conf else "SLURM_CONF is not set"
            problem = (f"no Slurm configuration found ({where}; no /etc/slurm/slurm.conf, no configless DNS record): "
                       "set SLURM_CONF or run on a login node of the cluster")  # fmt: skip
        else:
            problem = f"Slurm does not answer (sinfo: {said[:200] or f'exit {result.returncode}'}): is slurmctld up?"
        return SlurmAnswer([problem], None, [UNCHECKED])
    partitions = parse_partitions(result.stdout)
    if partitions is None:
        first = result.stdout.strip().splitlines()[:1]
        return SlurmAnswer([], None, [f"{UNCHECKED.replace('without an answer from Slurm', 'against the cluster')} "
                                      f"(sinfo answered {first[0][:80]!r} to {' '.join(PARTITION_QUERY)})"
                                      if first else UNCHECKED])  # fmt: skip
    return SlurmAnswer([], partitions)


def partition_problems(recipe: Recipe, partitions: list[Partition]) -> list[str]:
    """Does the job fit the partition it goes to? One line per miss, naming the recipe field, what the
    partition has, and the partitions where the whole job would fit."""
    cluster = recipe.cluster
    partition = find_partition(partitions, cluster.partition)
    offered = ", ".join(p.describe() for p in partitions)
    if partition is None:
        if cluster.partition:
            return [f"cluster.partition: no partition {cluster.partition!r} on this cluster; use one of: {offered}"]
        return [f"cluster.partition: not set, and this cluster has no default partition; use one of: {offered}"]
    gpus = cluster.gpus_per_node
    cpus = cluster.cpus_per_task
    memory = memory_mb(cluster.mem) if cluster.mem else None
    seconds = time_seconds(cluster.time)
    elsewhere = [p.describe() for p in partitions
                 if p is not partition and _fits(p, cluster.nodes, gpus, cpus, memory, seconds)]  # fmt: skip
    instead = f", or use one of: {', '.join(elsewhere)}" if elsewhere else ""
    name = f"partition {partition.name}"
    problems = []
    if gpus and partition.max_gpus == 0:
        others = f"use one of: {', '.join(elsewhere)}" if elsewhere else "no partition of this cluster fits the job"
        problems.append(f"cluster.gpus_per_node: {name} has no GPUs; set cluster.gpus_per_node=0 or {others}")
    elif gpus > partition.max_gpus:
        problems.append(f"cluster.gpus_per_node: {gpus} GPUs per node, but {name} has at most {partition.max_gpus} "
                        f"({partition.gpu_text()}); set cluster.gpus_per_node={partition.max_gpus} or less{instead}")  # fmt: skip
    most_cpus = partition.largest("cpus")
    if cpus and most_cpus is not None and cpus > most_cpus:
        problems.append(f"cluster.cpus_per_task: {cpus} CPUs, but the nodes of {name} have at most {most_cpus}; "
                        f"set cluster.cpus_per_task={most_cpus} or less, or leave it unset (then the job gets "
                        "the node's cores)")  # fmt: skip
    most_memory = partition.largest("memory_mb")
    if memory and most_memory is not None and memory > most_memory:
        problems.append(f"cluster.mem: {cluster.mem} per node, but the nodes of {name} have at most {most_memory}M; "
                        f"set cluster.mem={most_memory}M or less{instead}")  # fmt: skip
    if partition.max_time_s is not None and (seconds is None or seconds > partition.max_time_s):
        problems.append(f"cluster.time: {cluster.time} is longer than the MaxTime of {name} ({partition.max_time}); "
                        f"set cluster.time={partition.max_time} or less{instead}")  # fmt: skip
    if partition.max_job_nodes is not None and cluster.nodes > partition.max_job_nodes:
        problems.append(f"cluster.nodes: {cluster.nodes} nodes, but {name} takes at most {partition.max_job_nodes} "
                        f"per job (MaxNodes); set cluster.nodes={partition.max_job_nodes} or less{instead}")  # fmt: skip
    elif not problems:  # the node count, among the nodes the job fits on
        fitting = sum(g.count for g in partition.fitting(gpus, cpus, memory))
        having = f" with {gpus} or more GPUs" if gpus else ""
        if cluster.nodes > fitting:
            problems.append(f"cluster.nodes: {cluster.nodes} nodes, but {name} has {fitting}{having}; "
                            f"set cluster.nodes={fitting} or less{instead}")  # fmt: skip
    return problems


def _fits(partition: Partition, nodes: int, gpus: int, cpus: int | None, memory: int | None, seconds: int | None) -> bool:
    if partition.max_time_s is not None and (seconds is None or seconds > partition.max_time_s):
        return False
    if partition.max_job_nodes is not None and nodes > partition.max_job_nodes:
        return False
    return sum(g.count for g in partition.fitting(gpus, cpus, memory)) >= nodes


# ------------------------------------------------------------------------------ the rest


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
