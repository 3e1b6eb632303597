"""New run directories: one per submission, never reused, written all at once."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path

from launcher.errors import UserError
from launcher.rundir.durable import fsync_dir, fsync_tree
from launcher.rundir.find import DRY_RUN_TAG, is_dry_run
from launcher.rundir.layout import JOB_FILE

KEEP_DRY_RUNS = 10  # per output dir; older dry-run dirs are removed when a new one is written


def slug(name: str) -> str:
    """A name safe for a directory (the recipe name may be anything, `x; rm -rf ~` included)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return cleaned[:64] or "run"


def new_run_dir(output_dir: str | Path, name: str, dry_run: bool = False) -> Path:
    """A path that does not exist yet: <output_dir>/<name>-<YYYYmmdd-HHMMSS>-<random>
    (a dry run's: <name>-dryrun-<YYYYmmdd-HHMMSS>-<random>)."""
    root = Path(output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = f"-{DRY_RUN_TAG}" if dry_run else ""
    for _ in range(100):
        candidate = root / f"{slug(name)}{tag}-{stamp}-{secrets.token_hex(3)}"
        if not candidate.exists():
            return candidate
    raise UserError(f"output_dir {root}: could not find an unused run directory name")


def write_run_dir(run_dir: Path, files: dict[str, str | bytes], dirs: tuple[str, ...] = ()) -> None:
    """Write `files` into a hidden temporary dir, then rename it into place: a run dir either
    exists complete or not at all, and an existing one is never written into."""
    parent = run_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output_dir {parent}: cannot create it ({exc.strerror})") from None
    if run_dir.exists():
        raise UserError(f"run directory {run_dir} already exists; run directories are never reused")
    staging = parent / f".{run_dir.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
        for name in dirs:
            (staging / name).mkdir(parents=True, exist_ok=True)
        for relative, content in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")
        fsync_tree(staging)
        os.rename(staging, run_dir)  # fails if run_dir appeared meanwhile (non-empty)
        fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"output_dir {parent}: cannot write the run directory ({exc.strerror})") from None


def prune_dry_runs(output_dir: str | Path, keep: int = KEEP_DRY_RUNS) -> list[Path]:
    """Remove all but the newest `keep` dry-run dirs of `output_dir` (never a dir that was launched)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    dry = sorted((p for p in root.iterdir() if is_dry_run(p) and not (p / JOB_FILE).exists()),
                 key=lambda p: p.stat().st_mtime)  # fmt: skip
    removed = dry[: max(len(dry) - keep, 0)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
