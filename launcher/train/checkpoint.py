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
    """What must not change under a resumed run: model, data, optimisation, backend.
    (cluster, output and checkpoint cadence may change.)"""
    relevant = recipe.model_copy(
        update={
            "train": recipe.train.model_copy(update={"save_strategy": "no", "save_steps": None, "save_total_limit": 1,
                                                     "logging_steps": 1}),  # fmt: skip
            "cluster": type(recipe.cluster)(),
            "output_dir": "-",
        }
    )
    return hashlib.sha256(dump_recipe(relevant).encode()).hexdigest()[:16]


class Checkpointer:
    def __init__(self, accelerator, run_dir: Path, recipe: Recipe, hf_files: tuple | None = None):
        self.accelerator = accelerator
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


def check_resumable(manifest: dict, checkpoint: Path, world_size: int, fingerprint: str) -> None:
    if manifest["world_size"] != world_size:
        # Resharding the data position and per-rank RNG states is not supported: refuse, never guess.
        raise ResumeError(
            f"checkpoint {checkpoint.name} was written by {manifest['world_size']} processes, this job has "
            f"{world_size}: resume with the same nodes x processes, or start a new run from its model"
        )
    if manifest["recipe_fingerprint"] != fingerprint:
        raise ResumeError(
            f"checkpoint {checkpoint.name} belongs to a different recipe (model, data or train settings "
            "changed): a resumed run must keep them"
        )
