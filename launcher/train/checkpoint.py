"""Writing checkpoints: accelerate's save_state (model, optimizer, scheduler, every rank's RNG,
scaler) plus where the data stood, published whole or not at all; and the resume check.

A checkpoint is written into a hidden staging dir, its manifest (size and sha256 of every state
file) last; then every file is fsynced and the dir renamed into place. Re-writing a step that
exists moves the old copy aside first and deletes it only once the new one is in place, so a
crash at any moment leaves a complete copy of every step (launcher.rundir.checkpoints reads them).
Retention: the newest `train.save_total_limit` and the best one by the recipe's selection metric.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher import faults
from launcher.recipe import Recipe, dump_recipe
from launcher.recipe.schema import metric_goal
from launcher.rundir.checkpoints import (
    HF_DIR,
    MANIFEST,
    REPLACED_SUFFIX,
    STATE_DIR,
    checkpoint_name,
    checkpoints_root,
    complete_checkpoints,
    describe_files,
    to_keep,
)
from launcher.rundir.durable import fsync_dir, fsync_tree, write_json


@dataclass(frozen=True)
class Position:
    """Where training stands: after `step` optimizer steps, `batches` micro-batches into `epoch`."""

    step: int
    epoch: int
    batches: int  # micro-batches of `epoch` already consumed (per process)
    samples: int  # training rows seen so far (this rank)


def recipe_fingerprint(recipe: Recipe) -> str:
    """What must not change under a resumed run: model, data, optimisation, backend. (The cluster,
    output and checkpoint cadence may change, and gradient accumulation with the layout: the global
    batch it keeps is checked on its own.)"""
    relevant = recipe.model_copy(
        update={
            "train": recipe.train.model_copy(update={"save_strategy": "no", "save_steps": None, "save_total_limit": 1,
                                                     "logging_steps": 1, "gradient_accumulation_steps": 1}),  # fmt: skip
            "cluster": type(recipe.cluster)(),
            "output_dir": "-",
        }
    )
    return hashlib.sha256(dump_recipe(relevant).encode()).hexdigest()[:16]


class Checkpointer:
    def __init__(self, accelerator, run_dir: Path, recipe: Recipe, effective_batch: int | None,
                 hf_files: tuple | None = None):  # fmt: skip
        self.accelerator = accelerator
        self.effective_batch = effective_batch
        self.run_dir = Path(run_dir)
        self.root = checkpoints_root(run_dir)
        self.fingerprint = recipe_fingerprint(recipe)
        self.keep = recipe.train.save_total_limit
        self.metric = recipe.selection_metric
        self.hf_files = hf_files  # (model config, tokenizer): makes a checkpoint exportable on its own

    def save(self, position: Position, metrics: dict | None = None) -> Path:
        """Collective: every rank calls it (each writes its own RNG state; ZeRO ranks their shards)."""
        accelerator = self.accelerator
        name = checkpoint_name(position.step)
        final = self.root / name
        staging = self.root / f".{name}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            (staging / STATE_DIR).mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging / STATE_DIR))
        accelerator.wait_for_everyone()  # every rank's files are on disk
        if accelerator.is_main_process:
            if self.hf_files:
                for part in self.hf_files:
                    part.save_pretrained(staging / HF_DIR)
            faults.reach("checkpoint.staged")
            manifest = {
                **asdict(position),
                # where the data stood in the epoch's global order: any layout with this global batch can go on
                "global_batches": position.batches * accelerator.num_processes,
                "effective_batch": self.effective_batch,
                "world_size": accelerator.num_processes,
                "recipe_fingerprint": self.fingerprint,
                "metrics": metrics or {},
                "created": time.time(),
                "files": describe_files(staging / STATE_DIR),
            }
            write_json(staging / MANIFEST, manifest)
            fsync_tree(staging)
            self._publish(staging, final)
            self._prune()
        accelerator.wait_for_everyone()
        return final

    def _publish(self, staging: Path, final: Path) -> None:
        replaced = final.with_name(f".{final.name}{REPLACED_SUFFIX}")
        if final.exists():  # the same step again (a resumed run): keep the old copy until the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(final, replaced)
            fsync_dir(self.root)
            faults.reach("checkpoint.replacing")
        os.rename(staging, final)
        fsync_dir(self.root)
        shutil.rmtree(replaced, ignore_errors=True)

    def _prune(self) -> None:
        complete = complete_checkpoints(self.run_dir, deep=False, warn=False)
        keep = to_keep(complete, self.keep, self.metric, metric_goal(self.metric or "loss"))
        for checkpoint, _manifest in complete:
            if checkpoint not in keep:
                shutil.rmtree(checkpoint, ignore_errors=True)


class ResumeError(RuntimeError):
    pass


def start_position(manifest: dict, checkpoint: Path, world_size: int, fingerprint: str, effective_batch: int | None,
                   backend: str) -> Position:  # fmt: skip
    """Where this job goes on from `checkpoint`, on its own layout; ResumeError where it cannot."""
    if manifest["recipe_fingerprint"] != fingerprint:
        raise ResumeError(
            f"checkpoint {checkpoint.name} belongs to a different recipe (model, data or train settings "
            "changed): a resumed run must keep them"
        )
    written_by = manifest["world_size"]
    if written_by == world_size:
        return Position(manifest["step"], manifest["epoch"], manifest["batches"], manifest["samples"])
    if backend == "deepspeed":
        raise ResumeError(
            f"checkpoint {checkpoint.name} holds DeepSpeed ZeRO shards of {written_by} ranks, this job has "
            f"{world_size}: resume with the same nodes x processes"
        )
    if "global_batches" not in manifest or manifest.get("effective_batch") != effective_batch:
        raise ResumeError(
            f"checkpoint {checkpoint.name} was written by {written_by} processes with global batch "
            f"{manifest.get('effective_batch')}, this job has {world_size} with {effective_batch}: the global batch must stay"
        )
    if manifest["global_batches"] % world_size:  # at an optimizer step it divides (world x accumulation is kept)
        raise ResumeError(f"checkpoint {checkpoint.name} stands mid-step for {world_size} processes")
    # Each rank's share of what the whole job had consumed (the global data position is what counts).
    return Position(manifest["step"], manifest["epoch"], manifest["global_batches"] // world_size,
                    manifest["samples"] * written_by // world_size)  # fmt: skip
