"""Plan a recipe, render its configs into a new run directory, and launch it
(Slurm by default; --local runs it on this host; --dry-run stops just before launching)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from launcher.cli.options import add_override_arguments, overrides_from
from launcher.errors import UserError

HELP = "plan, render and launch a recipe (Slurm, or --local), or --dry-run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML file (not with --resume)")
    parser.add_argument(
        "--resume", metavar="RUN", help="continue a stopped run (its dir or name) from its newest valid checkpoint"
    )
    parser.add_argument("--nodes", type=int, help="number of nodes (cluster.nodes)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (cluster.gpus_per_node)")
    parser.add_argument(
        "--procs-per-node", type=int, help="processes per node (cluster.procs_per_node; default: one per GPU)"
    )
    parser.add_argument("--local", action="store_true", help="run on this host: N nodes = N local launchers")
    parser.add_argument(
        "--tpu", metavar="NAME", help="run on this Cloud TPU VM or pod slice (cluster.accelerator=tpu, cluster.tpu.name; "
        "also data.padding=max_length unless --set says otherwise: TPUs need fixed shapes)",
    )  # fmt: skip
    parser.add_argument("--zone", help="the TPU's zone, e.g. us-central2-b (cluster.tpu.zone)")
    parser.add_argument("--tpu-type", metavar="TYPE", help="TPU accelerator type, e.g. v4-32 (cluster.tpu.type)")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the run dir and print plan + files; launch nothing"
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="run one Slurm job array over these values, e.g. --sweep train.lr=2e-5,3e-5 (repeatable: a grid)",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="Slurm: submit even if the model/dataset is not in the local Hugging Face cache (compute nodes offline)",
    )
    parser.add_argument(
        "--script",
        metavar="TRAIN.PY",
        help="run your own training script with accelerate launch instead of the built-in trainer "
        "(entrypoint.script; its arguments go after --; without a recipe file: a minimal one)",
    )
    parser.set_defaults(takes_passthrough=True)  # `-- ARGS...`: the script's arguments (entrypoint.args)
    add_override_arguments(parser)


def _script_overrides(args: argparse.Namespace, overrides: list) -> list:
    """--script and the words after `--` as overrides of the recipe's entrypoint section; without a
    recipe file the job is named after the script (a --set name=... still wins)."""
    from launcher.recipe import Override

    if args.script is None:
        return overrides
    stem = Path(args.script).stem or "script"
    named = [] if args.recipe else [Override("name", stem, f"name={stem} (from --script)", origin="--script")]
    script = [Override("entrypoint.script", args.script, f"--script {args.script}", origin="--script")]
    passthrough = getattr(args, "passthrough", None)  # set by launcher.cli.main
    if passthrough is not None:
        text = "-- " + shlex.join(passthrough)
        script.append(Override("entrypoint.args", list(passthrough), text, origin="--"))
    return [*named, *overrides, *script]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from launcher.cli.display import print_files, print_plan
    from launcher.submit.hostfacts import host_facts
    from launcher.submit.prepare import prepare_run, write_prepared

    overrides = overrides_from(
        args,
        {
            "cluster.nodes": ("--nodes", args.nodes),
            "cluster.gpus_per_node": ("--gpus-per-node", args.gpus_per_node),
            "cluster.procs_per_node": ("--procs-per-node", args.procs_per_node),
            "cluster.tpu.name": ("--tpu", args.tpu),
            "cluster.tpu.zone": ("--zone", args.zone),
            "cluster.tpu.type": ("--tpu-type", args.tpu_type),
        },
    )
    overrides = _tpu_overrides(args, overrides)
    overrides = _script_overrides(args, overrides)
    console = Console(highlight=False, soft_wrap=True)  # long paths stay whole (copy-pastable, greppable)
    if args.resume:
        return _resume(args, overrides, console)
    if not args.recipe and not args.script:
        raise UserError("submit needs a recipe file, --script TRAIN.PY, or --resume RUN")
    if args.sweep:
        if args.local:
            raise UserError("--sweep submits one Slurm job array; it cannot run with --local (use --dry-run to see it)")
        return _submit_sweep(args, overrides, console)
    from launcher.submit.tpu_pod import remote_target, require_gcloud

    target = "local" if args.local else remote_target(args.recipe, overrides)
    if target == "slurm" and not args.dry_run:
        from launcher.submit.slurm import require_command

        require_command("sbatch")  # before anything is written
    if target == "tpu" and not args.dry_run:
        require_gcloud()
    prepared = prepare_run(args.recipe, overrides, target, host_facts(), args.argv)
    if target == "slurm":
        from launcher.render.sbatch import SCRIPT_NAME, render_sbatch
        from launcher.submit.prefetch import hf_cache_env

        prepared.files[SCRIPT_NAME] = render_sbatch(prepared.plan, prepared.recipe, hf_cache_env())
        if not args.dry_run and not args.no_check:
            _check_offline([prepared.recipe], args.recipe)
    write_prepared(prepared)
    if target == "slurm":
        for sub in ("logs", "status"):  # sbatch/srun open their log files there: the dir must exist
            (prepared.run_dir / sub).mkdir(exist_ok=True)
    if args.dry_run:
        print_plan(prepared.plan, console)
        print_files({k: v for k, v in prepared.files.items() if k != "env.json" and isinstance(v, str)}, console)
        if target == "slurm":
            _print_sbatch_command(prepared.run_dir / "sbatch.sh", console)
        if target == "tpu":
            _print_pod_command(prepared.run_dir, console)
        console.print(f"dry run: nothing launched; run dir written to {prepared.run_dir}")
        return 0
    if target == "local":
        from launcher.submit.local import run_local

        print_plan(prepared.plan, console)
        return run_local(prepared.plan, console)
    if target == "tpu":
        from launcher.submit.tpu_pod import run_pod

        print_plan(prepared.plan, console)
        return run_pod(prepared.run_dir, console)
    return _submit_one(prepared, console)


def _resume(args: argparse.Namespace, overrides, console) -> int:
    from launcher.submit.resume import resumable_plan
    from launcher.submit.slurm import resolve_run

    if args.recipe or overrides or args.sweep or args.dry_run:
        raise UserError("--resume RUN continues that run as planned: no recipe, --set, --nodes, --sweep or --dry-run")
    run_dir = resolve_run(args.resume, allow_sweep=False)
    plan, step, attempt = resumable_plan(run_dir, args.local)
    console.print(f"resuming {run_dir} from step {step} (attempt {attempt})", markup=False, highlight=False)
    if args.local:
        from launcher.submit.local import run_local

        return run_local(plan, console, attempt_base=attempt)
    from launcher.submit.slurm import job_record, submit_script, write_job_record

    os.environ["FTL_ATTEMPT_BASE"] = str(attempt)  # reaches the job through sbatch's --export=ALL
    script = run_dir / "sbatch.sh"
    submitted = submit_script(script)
    write_job_record(run_dir, job_record(submitted, script, resumed_from_step=step, attempt=attempt))
    console.print(f"submitted Slurm job {submitted.job_id}: {_display(run_dir)}", markup=False, highlight=False)
    _follow_hint(run_dir, console)
    return 0


def _check_offline(recipes: list, recipe_path: str) -> None:
    from launcher.submit.prefetch import check_offline

    problems: list[str] = []
    seen = set()
    for recipe in recipes:
        if recipe.entrypoint is not None:  # the user's own script: what it loads is its business
            continue
        key = (
            recipe.model.name_or_path,
            recipe.model.tokenizer,
            recipe.model.revision,
            recipe.data.dataset,
            recipe.data.config,
        )
        if key in seen:
            continue
        seen.add(key)
        problems += [p for p in check_offline(recipe, recipe_path) if p not in problems]
    if problems:
        raise UserError(*problems)


def _tpu_overrides(args: argparse.Namespace, overrides: list) -> list:
    """--tpu NAME also means cluster.accelerator=tpu and fixed-length padding (TPUs need fixed shapes);
    the padding goes first, so that a --set data.padding=... still wins (and a TPU plan refuses dynamic)."""
    from launcher.recipe import Override

    if args.tpu is None:
        return overrides
    accelerator = Override("cluster.accelerator", "tpu", f"--tpu {args.tpu} (cluster.accelerator=tpu)", origin="--tpu")
    padding = [] if args.script else [
        Override("data.padding", "max_length", f"--tpu {args.tpu} (data.padding=max_length)", origin="--tpu")
    ]  # fmt: skip
    return [*padding, *overrides, accelerator]


def _print_pod_command(run_dir: Path, console) -> None:
    from launcher.submit.tpu_pod import pod_command

    console.print("[bold]pod command[/bold] (what submit runs; it needs gcloud, and no TPU is reached by a dry run):")
    console.print("  " + shlex.join(pod_command(run_dir)), markup=False, highlight=False, soft_wrap=True)


def _print_sbatch_command(script: Path, console) -> None:
    from launcher.submit.slurm import sbatch_command

    console.print("[bold]sbatch command[/bold] (what submit runs):")
    console.print("  " + shlex.join(sbatch_command(script)), markup=False, highlight=False, soft_wrap=True)


def _display(path: Path) -> str:
    """The run dir as the user would type it: relative to here when it is below here."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _follow_hint(run: Path, console) -> None:
    shown = shlex.quote(_display(run))
    console.print(f"  follow it:  ftlaunch status {shown}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"  logs:       ftlaunch logs {shown} -f", markup=False, highlight=False, soft_wrap=True)
    console.print(f"  cancel:     ftlaunch cancel {shown}", markup=False, highlight=False, soft_wrap=True)


def _submit_one(prepared, console) -> int:
    from launcher.cli.display import print_plan
    from launcher.submit.slurm import job_record, submit_script, write_job_record

    script = prepared.run_dir / "sbatch.sh"
    submitted = submit_script(script)
    write_job_record(prepared.run_dir, job_record(submitted, script))
    print_plan(prepared.plan, console)
    console.print(
        f"submitted Slurm job {submitted.job_id} ({prepared.plan.nodes} node(s)): {_display(prepared.run_dir)}",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    _follow_hint(prepared.run_dir, console)
    return 0


def _submit_sweep(args: argparse.Namespace, overrides, console) -> int:
    from launcher.cli.display import print_files, print_plan
    from launcher.submit.hostfacts import host_facts
    from launcher.submit.prefetch import hf_cache_env
    from launcher.submit.slurm import job_record, require_command, submit_script, write_job_record
    from launcher.submit.sweep import parse_sweep, prepare_sweep, write_sweep

    axes = [parse_sweep(text) for text in args.sweep]
    if not args.dry_run:
        require_command("sbatch")
    sweep = prepare_sweep(args.recipe, overrides, axes, host_facts(), args.argv, hf_cache_env())
    if not args.dry_run and not args.no_check:
        _check_offline([run.recipe for run in sweep.runs], args.recipe)
    write_sweep(sweep)
    if args.dry_run:
        print_plan(sweep.runs[0].plan, console)
        for index, (run, point) in enumerate(zip(sweep.runs, sweep.points)):
            console.print(
                f"task {index}: {_point_text(point)} -> {run.run_dir}", markup=False, highlight=False, soft_wrap=True
            )
        print_files(sweep.files, console)
        _print_sbatch_command(sweep.script, console)
        console.print(f"dry run: nothing launched; {len(sweep.runs)} run dirs written to {sweep.sweep_dir}")
        return 0
    submitted = submit_script(sweep.script)
    runs = []
    for index, (run, point) in enumerate(zip(sweep.runs, sweep.points)):
        record = job_record(
            submitted,
            sweep.script,
            array_job_id=submitted.job_id,
            array_index=index,
            sweep_dir=str(sweep.sweep_dir),
            point=point,
        )
        record["job_id"] = f"{submitted.job_id}_{index}"
        write_job_record(run.run_dir, record)
        runs.append(str(run.run_dir))
    write_job_record(sweep.sweep_dir, job_record(submitted, sweep.script, array=True, runs=runs))
    console.print(
        f"submitted Slurm job array {submitted.job_id} ({len(sweep.runs)} tasks): {_display(sweep.sweep_dir)}",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    for index, (run, point) in enumerate(zip(sweep.runs, sweep.points)):
        console.print(
            f"  {submitted.job_id}_{index}  {_point_text(point)}  {_display(run.run_dir)}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    _follow_hint(sweep.sweep_dir, console)
    return 0


def _point_text(point: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items())
