"""Plan a recipe, render its configs into a new run directory, and launch it
(Slurm by default; --local runs it on this host; --dry-run stops just before launching)."""

from __future__ import annotations

import argparse
import os
import shlex
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
    from launcher.submit.preflight import SlurmQuery, preflight, unchecked
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
    target = "local" if args.local else "remote"  # remote: Slurm, or the TPU the recipe names
    slurm = SlurmQuery()  # asked at most once: for the sbatch defaults and the checks
    prepared = prepare_run(args.recipe, overrides, target, host_facts(), args.argv, dry_run=args.dry_run, slurm=slurm)
    target = prepared.plan.target
    problems = preflight([prepared.recipe], args.recipe, target, check_cache=not args.no_check, slurm=slurm)
    if problems and not args.dry_run:
        raise UserError(*problems)  # nothing written
    write_prepared(prepared)
    if args.dry_run:
        print_plan(prepared.plan, console)
        print_files({k: v for k, v in prepared.files.items() if k != "env.json" and isinstance(v, str)}, console)
        if target == "slurm":
            _print_sbatch_command(prepared.run_dir / "sbatch.sh", console)
        if target == "tpu":
            _print_pod_command(prepared.run_dir, console)
        _print_checks(problems, args.no_check, console, unchecked(target, slurm))
        _dry_run_done(prepared.run_dir, console)
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


LAYOUT_KEYS = ("cluster.nodes", "cluster.procs_per_node", "cluster.gpus_per_node")  # what --resume may change


def _resume(args: argparse.Namespace, overrides, console) -> int:
    from launcher.rundir.find import resolve_run
    from launcher.submit.resume import resumable_plan

    layout = {o.key.removeprefix("cluster."): o.value for o in overrides if o.key in LAYOUT_KEYS}
    if args.recipe or len(layout) < len(overrides) or args.sweep or args.dry_run:
        raise UserError(
            "--resume RUN continues that run: no recipe, --set, --sweep or --dry-run "
            "(--nodes, --procs-per-node and --gpus-per-node move it to another layout, keeping its global batch)"
        )
    run_dir = resolve_run(args.resume, allow_sweep=False)
    plan, step, attempt = resumable_plan(run_dir, args.local, layout)
    _plain(console, f"resuming {run_dir} from step {step} (attempt {attempt}) on {plan.nodes} node(s) x "
                    f"{plan.procs_per_node} process(es)")  # fmt: skip
    for note in plan.notes:
        if note.startswith("layout changed"):
            _plain(console, f"  {note}")
    if args.local:
        from launcher.submit.local import run_local

        return run_local(plan, console, attempt_base=attempt)
    from launcher.render.sbatch import SCRIPT_NAME
    from launcher.rundir.jobs import slurm_job_record, write_job_record
    from launcher.submit.slurm import submit_script

    script = run_dir / SCRIPT_NAME
    submitted = submit_script(script, extra_env={"FTL_ATTEMPT_BASE": str(attempt)})
    record = slurm_job_record(submitted.job_id, submitted.cluster, submitted.command, script,
                              resumed_from_step=step, attempt=attempt)  # fmt: skip
    write_job_record(run_dir, record)
    _plain(console, f"submitted Slurm job {submitted.job_id}: {_display(run_dir)}")
    _follow_hint(run_dir, console)
    return 0


def _print_checks(problems: list[str], skipped_cache: bool, console, not_checked: list[str] = ()) -> None:
    """A dry run runs every check a real submit runs, says which would stop it, and what it could not check."""
    if problems:
        console.print(f"[bold yellow]checks: {len(problems)} problem(s) would stop a real submit[/]:")
        for problem in problems:
            _plain(console, f"  {problem}")
    else:
        skipped = " (the Hugging Face cache check was skipped: --no-check)" if skipped_cache else ""
        console.print(f"[bold green]checks: passed[/]: a real submit would go ahead{skipped}")
    for line in not_checked:
        _plain(console, f"  {line}")


def _dry_run_done(run_dir: Path, console) -> None:
    from launcher.rundir.create import KEEP_DRY_RUNS, prune_dry_runs

    prune_dry_runs(run_dir.parent)
    _plain(console, f"dry run: nothing launched; its run dir (kept apart from real runs: `ftlaunch ls --all` lists it, "
                    f"the newest {KEEP_DRY_RUNS} dry runs are kept): {run_dir}")  # fmt: skip


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
    _plain(console, "  " + shlex.join(sbatch_command(script)))


def _display(path: Path) -> str:
    """The run dir as the user would type it: relative to here when it is below here."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _follow_hint(run: Path, console) -> None:
    shown = shlex.quote(_display(run))
    _plain(console, f"  follow it:  ftlaunch status {shown}")
    _plain(console, f"  logs:       ftlaunch logs {shown} -f")
    _plain(console, f"  cancel:     ftlaunch cancel {shown}")


def _submit_one(prepared, console) -> int:
    from launcher.cli.display import print_plan
    from launcher.render.sbatch import SCRIPT_NAME
    from launcher.rundir.jobs import slurm_job_record, write_job_record

    script = prepared.run_dir / SCRIPT_NAME
    submitted = _submit_or_forget(script, prepared.run_dir)
    write_job_record(prepared.run_dir, slurm_job_record(submitted.job_id, submitted.cluster, submitted.command, script))
    print_plan(prepared.plan, console)
    nodes = prepared.plan.nodes
    _plain(console, f"submitted Slurm job {submitted.job_id} ({nodes} node(s)): {_display(prepared.run_dir)}")
    _follow_hint(prepared.run_dir, console)
    return 0


def _submit_sweep(args: argparse.Namespace, overrides, console) -> int:
    from launcher.cli.display import print_files, print_plan
    from launcher.rundir.jobs import array_task_id, slurm_job_record, write_job_record
    from launcher.submit.hostfacts import host_facts
    from launcher.submit.preflight import SlurmQuery, preflight, unchecked
    from launcher.submit.sweep import parse_sweep, prepare_sweep, write_sweep

    axes = [parse_sweep(text) for text in args.sweep]
    slurm = SlurmQuery()
    sweep = prepare_sweep(args.recipe, overrides, axes, host_facts(), args.argv, dry_run=args.dry_run, slurm=slurm)
    problems = preflight([run.recipe for run in sweep.runs], args.recipe, "slurm", check_cache=not args.no_check,
                         slurm=slurm)  # fmt: skip
    if problems and not args.dry_run:
        raise UserError(*problems)  # nothing written
    write_sweep(sweep)
    if args.dry_run:
        print_plan(sweep.runs[0].plan, console)
        for index, (run, point) in enumerate(zip(sweep.runs, sweep.points)):
            _plain(console, f"task {index}: {_point_text(point)} -> {run.run_dir}")
        print_files(sweep.files, console)
        _print_sbatch_command(sweep.script, console)
        _print_checks(problems, args.no_check, console, unchecked("slurm", slurm))
        _dry_run_done(sweep.sweep_dir, console)
        return 0
    submitted = _submit_or_forget(sweep.script, sweep.sweep_dir)
    runs = []
    for index, (run, point) in enumerate(zip(sweep.runs, sweep.points)):
        record = slurm_job_record(
            array_task_id(submitted.job_id, index), submitted.cluster, submitted.command, sweep.script,
            array_job_id=submitted.job_id, array_index=index, sweep_dir=str(sweep.sweep_dir), point=point,
        )  # fmt: skip
        write_job_record(run.run_dir, record)
        runs.append(str(run.run_dir))
    array = slurm_job_record(submitted.job_id, submitted.cluster, submitted.command, sweep.script, array=True, runs=runs)
    write_job_record(sweep.sweep_dir, array)
    tasks = len(sweep.runs)
    _plain(console, f"submitted Slurm job array {submitted.job_id} ({tasks} tasks): {_display(sweep.sweep_dir)}")
    for index, (run, point) in enumerate(zip(sweep.runs, sweep.points)):
        _plain(console, f"  {array_task_id(submitted.job_id, index)}  {_point_text(point)}  {_display(run.run_dir)}")
    _follow_hint(sweep.sweep_dir, console)
    return 0


def _submit_or_forget(script: Path, written: Path):
    """sbatch; if Slurm refuses the job, the dir written for it goes too (a refused submit leaves nothing)."""
    import shutil

    from launcher.submit.slurm import submit_script

    try:
        return submit_script(script)
    except UserError:
        shutil.rmtree(written, ignore_errors=True)
        raise


def _plain(console, text: str) -> None:
    """Printed as is: paths and commands stay whole and copy-pastable (no markup, no wrapping)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _point_text(point: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in point.items())
