"""Checkpoint directories of a run: which exist, which are complete, which to keep.

    RUN/checkpoints/step-00000120/manifest.json   step, epoch, data position, metrics, and every
                                  state/...       file of accelerate's save_state with its size and sha256
                                  hf/             config + tokenizer (exportable on its own)

A checkpoint is published by renaming a finished, fsynced staging dir into place, and the manifest
is written last, so a `step-*` dir either is complete or fails verification: a file missing, cut
short, or changed (same size, other bytes) is found, and the checkpoint is skipped for the next
older one. Writing is the training process's job (launcher.train.checkpoint); this module reads.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from launcher.rundir.layout import CHECKPOINTS_DIR

MANIFEST = "manifest.json"
STATE_DIR = "state"
HF_DIR = "hf"
STEP_PREFIX = "step-"
REPLACED_SUFFIX = ".replaced"  # a step-* dir being replaced by a newer copy of the same step


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Published checkpoints, oldest first. A `.step-N.replaced` dir whose `step-N` is gone (a crash
    while replacing it) still counts: it is the last complete copy of that step."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)}
    for path in root.iterdir():
        name = path.name.removeprefix(".").removesuffix(REPLACED_SUFFIX)
        if path.name.endswith(REPLACED_SUFFIX) and name.startswith(STEP_PREFIX) and name not in found:
            found[name] = path
    return [found[name] for name in sorted(found)]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(state_dir: Path) -> dict[str, dict]:
    """relative path -> {"bytes": size, "sha256": digest} for every file below state_dir."""
    return {
        str(path.relative_to(state_dir)): {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(state_dir.rglob("*"))
        if path.is_file()
    }


def read_manifest(checkpoint: Path) -> tuple[dict | None, str | None]:
    path = checkpoint / MANIFEST
    if not path.is_file():
        return None, "no manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({exc})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, "manifest.json lists no files"
    return manifest, None


def verify(checkpoint: Path, deep: bool = True) -> tuple[dict | None, str | None]:
    """(manifest, None) if every file the manifest lists is there with its size and (deep) its
    sha256, else (None, why not)."""
    manifest, problem = read_manifest(checkpoint)
    if manifest is None:
        return None, problem
    state = checkpoint / STATE_DIR
    for name, expected in manifest["files"].items():
        path = state / name
        if not path.is_file():
            return None, f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return None, f"{name} is {size} bytes, the manifest says {expected['bytes']}"
        if deep and file_digest(path) != expected["sha256"]:
            return None, f"{name} does not match its sha256 in the manifest (changed or corrupt)"
    return manifest, None


def complete_checkpoints(run_dir: Path, deep: bool = True, warn: bool = True) -> list[tuple[Path, dict]]:
    """(dir, manifest) of every checkpoint that verifies, oldest first; the others are named in a warning."""
    complete = []
    for checkpoint in checkpoint_dirs(run_dir):
        manifest, problem = verify(checkpoint, deep)
        if manifest is not None:
            complete.append((checkpoint, manifest))
        elif warn:
            warnings.warn(f"skipping checkpoint {checkpoint.name}: {problem}", stacklevel=2)
    return complete


def latest_valid(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies (checked newest first: older ones are not read)."""
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        manifest, problem = verify(checkpoint)
        if manifest is not None:
            return checkpoint, manifest
        warnings.warn(f"skipping checkpoint {checkpoint.name}: {problem}", stacklevel=2)
    return None


def last_checkpoint_step(run_dir: Path) -> int | None:
    """The newest complete checkpoint's step (for `ftlaunch status`: sizes only, nothing hashed)."""
    for checkpoint in reversed(checkpoint_dirs(run_dir)):
        manifest, _problem = verify(checkpoint, deep=False)
        if manifest is not None:
            return manifest["step"]
    return None


def best_of(checkpoints: list[tuple[Path, dict]], metric: str, goal: str) -> tuple[Path, dict] | None:
    """The checkpoint whose manifest has the best value of `metric` ("min" or "max" is better);
    of equal values, the earliest."""
    scored = [(c, m) for c, m in checkpoints if isinstance((m.get("metrics") or {}).get(metric), (int, float))]
    if not scored:
        return None
    sign = 1 if goal == "min" else -1
    return min(scored, key=lambda cm: (sign * cm[1]["metrics"][metric], cm[1]["step"]))


def to_keep(checkpoints: list[tuple[Path, dict]], newest: int, metric: str | None, goal: str) -> set[Path]:
    """The newest `newest` checkpoints, and the best one by `metric` (if any checkpoint has it)."""
    keep = {c for c, _m in checkpoints[-newest:]} if newest > 0 else set()
    best = best_of(checkpoints, metric, goal) if metric else None
    if best is not None:
        keep.add(best[0])
    return keep
