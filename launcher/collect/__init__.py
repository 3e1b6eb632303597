"""Collect a run: merge every rank's metric records, summarise them into one report.

    from launcher.collect import collect_run
    report = collect_run(run_dir)          # what rank 0 calls at the end of a job (prints nothing)

writes into the run dir: report.json, report.md, curves.png, metrics.jsonl (merged, step order,
no duplicates across restarts). `ftlaunch collect` is the same, by hand, with a terminal table.
"""

from __future__ import annotations

import json
from pathlib import Path

from launcher import faults
from launcher.collect import curves
from launcher.collect.ranks import DEFAULT_STRAGGLER_MARGIN
from launcher.collect.records import merge, read_records, to_jsonl
from launcher.collect.render import markdown
from launcher.collect.report import build_report
from launcher.errors import UserError
from launcher.rundir.durable import write_durable
from launcher.rundir.find import is_run_dir
from launcher.rundir.layout import PLAN_FILE

__all__ = ["collect_run", "make_report"]


def make_report(
    run_dir: str | Path, straggler_margin: float = DEFAULT_STRAGGLER_MARGIN
) -> tuple[dict, list[dict], bytes | None]:
    """(report, merged records, curves PNG or None when there is nothing to draw) for a run dir; writes nothing."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir}: not an ftlaunch run dir (no {PLAN_FILE})")
    read = read_records(run_dir)
    merged = merge(read.records)
    report = build_report(run_dir, read, merged, straggler_margin)
    data = curves.series(merged, report["eval"]["history"])
    if not any(steps for steps, _values in data.values()):  # e.g. a user's script: no records of ours
        report["curves"] = None
        return report, merged, None
    title = f"{report['run']['name']} ({run_dir.name}): {report['state']['state']}"
    png = curves.render_png(data, title, {int(a): s for a, s in report["resumed_from"].items()})
    report["curves"] = {
        "path": "curves.png",
        "size": [int(curves.FIGSIZE[0] * curves.DPI), int(curves.FIGSIZE[1] * curves.DPI)],
        "series": {name: len(steps) for name, (steps, _values) in data.items()},
    }
    return report, merged, png


def collect_run(
    run_dir: str | Path,
    quiet: bool = True,
    write: bool = True,
    straggler_margin: float = DEFAULT_STRAGGLER_MARGIN,
) -> dict:
    """Report on a run (finished, running or failed) and, unless write=False, write report.json,
    report.md, curves.png and metrics.jsonl into it. Returns the report (report.json's content).
    quiet=False prints the rich tables. Safe to re-run: every file is replaced whole."""
    run_dir = Path(run_dir)
    report, merged, png = make_report(run_dir, straggler_margin)
    if write:
        write_durable(run_dir / "metrics.jsonl", to_jsonl(merged))
        faults.reach("report.writing")
        if png is not None:
            write_durable(run_dir / "curves.png", png)
        write_durable(run_dir / "report.md", markdown(report))
        write_durable(run_dir / "report.json", json.dumps(report, indent=2) + "\n")
    if not quiet:
        from rich.console import Console

        from launcher.collect.render import rich_tables

        console = Console()
        for table in rich_tables(report):
            console.print(table)
    return report
