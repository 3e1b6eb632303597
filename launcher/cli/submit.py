"""Plan a recipe, render its configs into a new run directory, and launch it
(Slurm by default; --local runs it on this host; --dry-run stops just before launching)."""

from __future__ import annotations

import argparse
import sys

from launcher.cli.options import add_override_arguments, overrides_from
from launcher.errors import UserError

HELP = "plan, render and launch a recipe (Slurm, or --local), or --dry-run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--nodes", type=int, help="number of nodes (cluster.nodes)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (cluster.gpus_per_node)")
    parser.add_argument(
        "--procs-per-node", type=int, help="processes per node (cluster.procs_per_node; default: one per GPU)"
    )
    parser.add_argument("--local", action="store_true", help="run on this host: N nodes = N local launchers")
    parser.add_argument("--dry-run", action="store_true", help="write the run dir and print plan + files; launch nothing")
    add_override_arguments(parser)


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
        },
    )
    target = "local" if args.local else "slurm"
    prepared = prepare_run(args.recipe, overrides, target, host_facts(), ["ftlaunch", *sys.argv[1:]])
    write_prepared(prepared)
    console = Console(highlight=False)
    if args.dry_run:
        print_plan(prepared.plan, console)
        print_files({k: v for k, v in prepared.files.items() if k != "env.json"}, console)
        console.print(f"dry run: nothing launched; run dir written to {prepared.run_dir}")
        return 0
    if target == "local":
        from launcher.submit.local import run_local

        print_plan(prepared.plan, console)
        return run_local(prepared.plan, console)
    raise UserError("Slurm submission is not available in this build; use --local or --dry-run")
