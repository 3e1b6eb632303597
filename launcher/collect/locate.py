"""Which run dirs a `collect` argument names: a run dir, a run name under the output dir, or a
sweep dir (any dir whose subdirs include run dirs). A run dir is a dir holding plan.json."""

from __future__ import annotations

from pathlib import Path

from launcher.errors import UserError

PLAN_FILE = "plan.json"


def is_run_dir(path: Path) -> bool:
    return (path / PLAN_FILE).is_file()


def runs_inside(path: Path) -> list[Path]:
    """Run dirs directly under `path` (a sweep dir, or an output dir), sorted by name."""
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if not child.name.startswith(".") and is_run_dir(child))


def newest_run(output_dir: Path) -> Path:
    runs = runs_inside(output_dir)
    if not runs:
        raise UserError(f"no runs under {output_dir}/: pass RUN (a run dir or a run name)")
    return max(runs, key=lambda run: (run / PLAN_FILE).stat().st_mtime)


def resolve(arg: str, output_dir: Path) -> list[Path]:
    """The run dirs `arg` names; a UserError (one line, naming `arg`) when it names none."""
    for candidate in (Path(arg), output_dir / arg):
        if is_run_dir(candidate):
            return [candidate]
    for candidate in (Path(arg), output_dir / arg):
        inside = runs_inside(candidate)
        if inside:
            return inside
    if Path(arg).is_dir() or (output_dir / arg).is_dir():
        raise UserError(f"{arg}: not an ftlaunch run dir (no {PLAN_FILE}) and no run dirs inside it")
    prefixed = [run for run in runs_inside(output_dir) if run.name.startswith(arg)] if "/" not in arg else []
    if len(prefixed) == 1:
        return prefixed
    if prefixed:
        names = ", ".join(run.name for run in prefixed[:4])
        raise UserError(f"{arg}: matches {len(prefixed)} runs under {output_dir}/ ({names}, ...): be more specific")
    raise UserError(f"{arg}: no such run dir, and no run of that name under {output_dir}/")


def resolve_all(args: list[str], output_dir: str | Path) -> list[Path]:
    root = Path(output_dir)
    if not args:
        return [newest_run(root)]
    found: list[Path] = []
    for arg in args:
        for run in resolve(arg, root):
            if run.resolve() not in {r.resolve() for r in found}:
                found.append(run)
    return found
