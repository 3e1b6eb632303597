"""Checkpoints: accelerate's save_state (model, optimizer, scheduler, every rank's RNG, scaler) plus
where the data stood, written atomically with a manifest; resume picks the newest valid one.

Layout: RUN/checkpoints/step-00000120/{manifest.json, state/..., hf/ (config + tokenizer)}. A checkpoint is written into a
hidden `.step-....partial` dir and renamed into place, so a crash never leaves a half-written
`step-*`. A `step-*` whose manifest is missing or disagrees with its files (a truncated file, a
missing shard) is skipped, with a warning, in favour of the next older one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.recipe import Recipe, dump_recipe

MANIFEST = "manifest.json"


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


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), key=lambda p: p.name)


def _files(state_dir: Path) -> dict[str, int]:
    return {
        str(path.relative_to(state_dir)): path.stat().st_size
        for path in sorted(state_dir.rglob("*"))
        if path.is_file()
    }


def verify(checkpoint: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) if the checkpoint is complete, else (None, why not)."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return None, "no manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"unreadable manifest ({exc})"
    actual = _files(checkpoint / "state")
    for name, size in manifest.get("files", {}).items():
        if name not in actual:
            return None, f"{name} is missing"
        if actual[name] != size:
            return None, f"{name} is {actual[name]} bytes, the manifest says {size}"
    return manifest, None


def latest_valid(run_dir: Path) -> tuple[Path, dict] | None:
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        manifest, problem = verify(checkpoint)
        if manifest is not None:
            return checkpoint, manifest
        warnings.warn(f"skipping checkpoint {checkpoint.name}: {problem}", stacklevel=2)
    return None


def last_checkpoint_step(run_dir: Path) -> int | None:
    """The newest complete checkpoint's step (for `ftlaunch status`), without loading anything."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = latest_valid(run_dir)
    return found[1]["step"] if found else None


class Checkpointer:
    def __init__(self, accelerator, run_dir: Path, recipe: Recipe, keep: int, hf_files: tuple | None = None):
        self.accelerator = accelerator
        self.root = run_dir / "checkpoints"
        self.fingerprint = recipe_fingerprint(recipe)
        self.keep = keep
        self.hf_files = hf_files  # (model config, tokenizer): makes a checkpoint exportable on its own

    def save(self, position: Position, metrics: dict | None = None) -> Path:
        """Collective: every rank calls it (each writes its own RNG state; ZeRO ranks their shards)."""
        accelerator = self.accelerator
        final = self.root / f"step-{position.step:08d}"
        staging = self.root / f".step-{position.step:08d}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "state").mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging / "state"))
        accelerator.wait_for_everyone()  # every rank's files are on disk
        if accelerator.is_main_process:
            manifest = {
                **asdict(position),
                "world_size": accelerator.num_processes,
                "recipe_fingerprint": self.fingerprint,
                "metrics": metrics or {},
                "created": time.time(),
                "files": _files(staging / "state"),
            }
            if self.hf_files:
                for part in self.hf_files:
                    part.save_pretrained(staging / "hf")
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():  # a resumed run may write the same step again
                shutil.rmtree(final)
            os.rename(staging, final)
            self._prune()
        accelerator.wait_for_everyone()
        return final

    def _prune(self) -> None:
        complete = [p for p in checkpoint_dirs(self.root.parent) if (p / MANIFEST).is_file()]
        for old in complete[: max(len(complete) - self.keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)


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
