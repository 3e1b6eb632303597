"""Sweeps: `--sweep train.lr=2e-5,3e-5,5e-5` (repeatable: a grid) -> ONE Slurm job array.

Layout: a sweep dir `<output_dir>/<name>-sweep-<stamp>-<rand>/` holds the array script
(`sbatch.sh`), `sweep.json` (index -> point -> run dir), `job.json` (the array job id) and
`logs/slurm-<array job>_<index>.out` (what a task prints before it switches to its run dir). Each
point is a normal run dir inside it, prepared by the same path as a single run (`prepare_run`,
with output_dir set to the sweep dir): its own recipe.yaml, plan.json, accelerate.yaml, logs/ and
job.json (array job id + index). Task N of the array runs the N-th run dir.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from launcher.plan import HostFacts
from launcher.recipe import Override, load_recipe, parse_override
from launcher.render.sbatch import SCRIPT_NAME, render_array_sbatch, sbatch_header_lines
from launcher.rundir.create import new_run_dir, write_run_dir
from launcher.rundir.layout import LOGS_DIR, SWEEP_FILE
from launcher.hfcache import hf_cache_env
from launcher.submit.preflight import SlurmQuery
from launcher.submit.prepare import PreparedRun, prepare_run, write_prepared

# Keys a job array cannot vary: every task gets the same resources, name and parent dir.
FIXED_KEYS = ("cluster", "output_dir", "name")
MAX_POINTS = 1000  # Slurm's default MaxArraySize is 1001


@dataclass(frozen=True)
class SweepAxis:
    key: str
    values: list[Any]
    texts: list[str]  # each value as typed


def parse_sweep(text: str) -> SweepAxis:
    """`train.lr=2e-5,3e-5` -> SweepAxis("train.lr", [2e-05, 3e-05]); values are YAML scalars like --set."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise UserError(f"--sweep {text!r}: expected KEY=V1,V2,..., e.g. --sweep train.lr=2e-5,3e-5,5e-5")
    texts = [part.strip() for part in raw.split(",")]
    if any(not part for part in texts):
        raise UserError(f"--sweep {text!r}: an empty value (two commas in a row, or a trailing comma)")
    if key.split(".")[0] in FIXED_KEYS:
        raise UserError(
            f"--sweep {key}: every task of a job array shares the same {key.split('.')[0]}; "
            "sweep it with separate submits"
        )
    values = [parse_override(f"{key}={part}", flag="--sweep").value for part in texts]
    if len(set(map(repr, values))) != len(values):
        raise UserError(f"--sweep {text!r}: a value is listed twice")
    return SweepAxis(key, values, texts)


def grid(axes: list[SweepAxis]) -> list[list[Override]]:
    """Cartesian product, the first --sweep varying slowest."""
    keys = [axis.key for axis in axes]
    if len(set(keys)) != len(keys):
        raise UserError(
            f"--sweep: {sorted(k for k in keys if keys.count(k) > 1)[0]} is swept twice; "
            "list all its values in one --sweep"
        )
    points = []
    for combo in itertools.product(*[list(zip(axis.values, axis.texts)) for axis in axes]):
        points.append(
            [
                Override(axis.key, value, f"--sweep {axis.key}={text}", origin="--sweep")
                for axis, (value, text) in zip(axes, combo)
            ]
        )
    if len(points) > MAX_POINTS:
        raise UserError(f"--sweep: {len(points)} points; a job array holds at most {MAX_POINTS}")
    return points


def point_dict(point: list[Override]) -> dict[str, Any]:
    return {override.key: override.value for override in point}


@dataclass(frozen=True)
class PreparedSweep:
    sweep_dir: Path
    runs: list[PreparedRun]
    points: list[dict[str, Any]]
    files: dict[str, str]  # the sweep dir's own files (sbatch.sh, sweep.json)

    @property
    def script(self) -> Path:
        return self.sweep_dir / SCRIPT_NAME


def prepare_sweep(
    recipe_path: str,
    overrides: list[Override],
    axes: list[SweepAxis],
    host: HostFacts,
    argv: list[str],
    dry_run: bool = False,
    slurm: SlurmQuery | None = None,
) -> PreparedSweep:
    """Validate every point, plan and render in memory (nothing written; UserError on any problem)."""
    swept = {axis.key for axis in axes}
    for override in overrides:
        if override.key in swept or any(
            override.key.startswith(k + ".") or k.startswith(override.key + ".") for k in swept
        ):
            raise UserError(f"{override.describe(override.key)} and --sweep {override.key} both set it: drop one")
    base = load_recipe(recipe_path, overrides).recipe
    sweep_dir = new_run_dir(base.output_dir, f"{base.name}-sweep", dry_run=dry_run)
    into_sweep = Override("output_dir", str(sweep_dir), f"output_dir={sweep_dir} (set by --sweep)", origin="--sweep")
    runs, points = [], []
    problems: list[str] = []
    for point in grid(axes):
        try:
            runs.append(prepare_run(recipe_path, [*overrides, *point, into_sweep], "slurm", host, argv, slurm=slurm))
            points.append(point_dict(point))
        except UserError as exc:
            label = ", ".join(o.text for o in point)
            problems += [f"{label}: {p}" for p in exc.problems]
    if problems:
        raise UserError(*problems)
    headers = {tuple(sbatch_header_lines(run.plan, run.recipe)) for run in runs}
    pythons = {run.plan.python for run in runs}
    if len(headers) != 1 or len(pythons) != 1:
        raise UserError("--sweep: the points need different Slurm resources; a job array gives every task the same")
    for run in runs:
        run.files.pop(SCRIPT_NAME, None)  # the array script (in the sweep dir) is what runs
    facts = slurm.facts_for(runs[0].recipe) if slurm is not None else None
    script = render_array_sbatch([run.plan for run in runs], runs[0].recipe, str(sweep_dir), hf_cache_env(), facts)
    sweep = {
        "recipe": recipe_path,
        "axes": {axis.key: axis.values for axis in axes},
        "runs": [{"index": i, "point": points[i], "run_dir": str(run.run_dir)} for i, run in enumerate(runs)],
    }
    files = {SCRIPT_NAME: script, SWEEP_FILE: json.dumps(sweep, indent=2) + "\n"}
    return PreparedSweep(sweep_dir, runs, points, files)


def write_sweep(sweep: PreparedSweep) -> None:
    """The sweep dir first (it is the run dirs' parent), then every run dir; logs/ dirs exist before sbatch."""
    write_run_dir(sweep.sweep_dir, sweep.files, dirs=(LOGS_DIR,))
    for run in sweep.runs:
        write_prepared(run)
