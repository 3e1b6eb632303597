"""Which run dirs a command-line RUN names: a run dir, a run name under the output dir (or the
start of one), a sweep dir, or nothing (the newest run). A run dir is a dir holding plan.json; a
sweep dir holds sweep.json and one run dir per point."""

from __future__ import annotations

from pathlib import Path

from launcher.errors import UserError
from launcher.rundir.durable import read_json
from launcher.rundir.layout import PLAN_FILE, SWEEP_FILE

DEFAULT_OUTPUT_DIR = "runs"
DRY_RUN_TAG = "dryrun"  # in the name of a dry run's dir: <name>-dryrun-<stamp>-<random>


def is_run_dir(path: Path) -> bool:
    return (Path(path) / PLAN_FILE).is_file()


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def is_dry_run(path: Path) -> bool:
    return f"-{DRY_RUN_TAG}-" in Path(path).name


def created_at(run_dir: Path) -> float:
    try:
        return (run_dir / PLAN_FILE).stat().st_mtime
    except OSError:
        return 0.0


def runs_inside(path: Path) -> list[Path]:
    """Run dirs directly under `path` (a sweep dir, or any dir of runs), sorted by name."""
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if not child.name.startswith(".") and is_run_dir(child))


def iter_runs(output_dir: str | Path, dry_runs: bool = False) -> list[Path]:
    """Run dirs under output_dir (a sweep's runs are inside its sweep dir), newest first; dry runs
    only when asked for."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir() or (is_dry_run(child) and not dry_runs):
            continue
        if is_run_dir(child):
            found.append(child)
        elif is_sweep_dir(child):
            found += runs_inside(child)
    return sorted(found, key=created_at, reverse=True)


def sweep_runs(sweep_dir: Path) -> list[Path]:
    """A sweep's run dirs in task order (sweep.json)."""
    data = read_json(sweep_dir / SWEEP_FILE) or {}
    return [Path(entry["run_dir"]) for entry in data.get("runs", [])]


def resolve_run(
    arg: str | None, output_dir: str | Path = DEFAULT_OUTPUT_DIR, allow_sweep: bool = True, allow_group: bool = False
) -> Path:
    """RUN as a run dir path, a run (or sweep) name or name prefix under output_dir, or None: the
    newest run. allow_group: also any dir with run dirs inside (compare them all)."""
    root = Path(output_dir)
    if arg is None:
        runs = iter_runs(root)
        if not runs:
            raise UserError(f"no runs under {root}/: pass RUN (a run dir or a run name) or --output-dir")
        return runs[0]
    candidates = (Path(arg), root / arg)
    for candidate in candidates:
        if is_run_dir(candidate) or (allow_sweep and is_sweep_dir(candidate)):
            return candidate
    if allow_group:
        for candidate in candidates:
            if runs_inside(candidate):
                return candidate
    if any(candidate.is_dir() for candidate in candidates):
        raise UserError(f"{arg}: not an ftlaunch run dir (no {PLAN_FILE})")
    named = [r for r in iter_runs(root, dry_runs=True) if r.name.startswith(arg)] if "/" not in arg else []
    if len(named) == 1:
        return named[0]
    if named:
        shown = ", ".join(r.name for r in named[:4])
        raise UserError(f"{arg}: matches {len(named)} runs under {root}/ ({shown}, ...): be more specific")
    raise UserError(f"{arg}: no such run dir, and no run of that name under {root}/")


def expand(target: Path) -> list[Path]:
    """The run dirs a resolved RUN stands for: itself, a sweep's runs, or the runs inside a dir."""
    if is_run_dir(target):
        return [target]
    if is_sweep_dir(target):
        return sweep_runs(target)
    return runs_inside(target)
