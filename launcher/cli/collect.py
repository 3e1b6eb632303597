"""Collect runs into reports. One RUN: merge its ranks' metric records and write report.json,
report.md, curves.png and metrics.jsonl into the run dir, and print the report. Several RUNs (or a
sweep dir: a dir of run dirs): write each run's own report and print one table, side by side.
RUN: a run dir, or a run name under --output-dir; default: the newest run there."""

from __future__ import annotations

import argparse

from launcher.errors import UserError

HELP = "report on a run (metrics, throughput, stragglers, curves), or compare runs side by side"


def margin(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (0.2 or 20%)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the margin cannot be negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="*", metavar="RUN", help="run dirs, run names or sweep dirs (default: the newest run)"
    )
    parser.add_argument("--output-dir", default="runs", help="where run names are looked up (default: runs)")
    parser.add_argument(
        "--straggler-margin", type=margin, default=0.2, metavar="M",
        help="flag a rank whose mean step time exceeds the median by more than M (default 0.2 = 20%%)",
    )  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print only; write nothing into the run dirs")
    parser.add_argument("--markdown", action="store_true", help="print markdown (as report.md) instead of rich tables")
    parser.add_argument(
        "--export", metavar="DIR", help="also write one Hugging Face model dir (config, safetensors, tokenizer) to DIR"
    )
    parser.add_argument(
        "--from", dest="export_from", choices=("latest", "best", "final"), default="latest",
        help="what --export takes: the latest or best checkpoint (ZeRO shards consolidated), or the final model",
    )  # fmt: skip
    parser.add_argument("--metric", help="with --from best: e.g. validation_f1 (default: the recipe's first metric)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from launcher.collect import collect_run
    from launcher.collect.compare import compare_markdown, compare_table
    from launcher.rundir.find import expand, resolve_run
    from launcher.collect.render import markdown, rich_tables

    runs: list = []
    for arg in args.runs or [None]:  # no RUN: the newest run
        target = resolve_run(arg, args.output_dir, allow_group=True)
        runs += [run for run in expand(target) if run.resolve() not in {r.resolve() for r in runs}]
    if not runs:
        raise UserError(f"{args.runs[0]}: not an ftlaunch run dir (no plan.json) and no run dirs inside it")
    if args.export and len(runs) != 1:
        raise UserError(f"--export {args.export}: give exactly one run to export (got {len(runs)})")
    write = not args.no_write
    reports = [collect_run(run, write=write, straggler_margin=args.straggler_margin) for run in runs]
    console = Console()
    if len(reports) == 1:
        if args.markdown:
            print(markdown(reports[0]), end="")
        else:
            for table in rich_tables(reports[0]):
                console.print(table)
    elif args.markdown:
        print(compare_markdown(reports), end="")
    else:
        console.print(compare_table(reports))
    if write:
        for run, report in zip(runs, reports):
            written = ["report.json", "report.md", *(["curves.png"] if report.get("curves") else []), "metrics.jsonl"]
            print(f"wrote {', '.join(written)} in {run}")
    if args.export:
        from pathlib import Path

        from launcher.collect.export import export_model

        info = export_model(runs[0], Path(args.export).resolve(), args.export_from, args.metric)
        step = f" (step {info['step']})" if "step" in info else ""
        print(f"exported {info['source']}{step} to {Path(args.export).resolve()}")
    return 0
