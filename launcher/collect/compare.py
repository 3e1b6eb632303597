"""Several runs side by side: one column per run, one row per quantity, the best value of each
comparable row marked (highest metric, lowest loss, highest throughput, shortest time)."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from launcher.collect.render import md_table, num, rate
from launcher.recipe.schema import metric_goal


def _get(report: dict, *path):
    value = report
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def row_specs(reports: list[dict]) -> list[tuple[str, object, str | None, object]]:
    """(label, getter, best mode: "max" | "min" | None, formatter)."""
    specs = [
        ("state", lambda r: r["state"]["state"] + ("" if r["state"]["complete"] else " (partial)"), None, str),
        ("world size", lambda r: r["config"]["world_size"], None, num),
        ("nodes x procs", lambda r: f"{r['config']['nodes']} x {r['config']['procs_per_node']}", None, str),
        ("effective batch", lambda r: r["config"]["effective_batch_size"], None, num),
        ("lr", lambda r: r["config"]["lr"], None, num),
        ("precision", lambda r: r["config"]["precision"], None, str),
        ("backend", lambda r: r["config"]["backend"], None, str),
        ("steps", lambda r: r["train"]["last_step"], None, num),
        ("restarts", lambda r: r["restarts"], None, num),
    ]
    names = sorted({n for r in reports for n in ((_get(r, "eval", "final", "metrics") or {}).keys())})
    best_names = sorted({n for r in reports for n in (_get(r, "eval", "best") or {})})
    for n in names:
        specs.append((f"final {n}", lambda r, n=n: _get(r, "eval", "final", "metrics", n), metric_goal(n), num))
    for n in best_names:
        specs.append((f"best {n}", lambda r, n=n: _get(r, "eval", "best", n, "value"), metric_goal(n), num))
    specs += [
        ("samples/s", lambda r: r["throughput"]["samples_per_s"], "max", rate),
        ("tokens/s", lambda r: r["throughput"]["tokens_per_s"], "max", rate),
        ("train s", lambda r: r["train"]["train_seconds"], "min", lambda v: num(v, 1)),
        ("wall s", lambda r: r["time"]["wall_seconds"], "min", lambda v: num(v, 1)),
        ("synchronised", lambda r: r["sync"]["synchronised"], None, lambda v: "n/a" if v is None else str(v).lower()),
        ("stragglers", lambda r: len(r["stragglers"]["ranks"]), None, num),
    ]
    return specs


def compare_rows(reports: list[dict]) -> list[tuple[str, list[str], list[bool]]]:
    """(label, one cell per run, which cells hold the row's best value)."""
    rows = []
    for label, getter, mode, formatter in row_specs(reports):
        values = [getter(r) for r in reports]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        best = None
        if mode and len(numbers) >= 2 and len(set(numbers)) > 1:
            best = max(numbers) if mode == "max" else min(numbers)
        marks = [best is not None and v == best for v in values]
        rows.append((label, [formatter(v) if v is not None else "-" for v in values], marks))
    return rows


def column_names(reports: list[dict]) -> list[str]:
    return [Path(r["run"]["run_dir"]).name for r in reports]


def compare_table(reports: list[dict]) -> Table:
    table = Table(title=f"ftlaunch compare: {len(reports)} runs (best per row in bold green)", title_justify="left")
    table.add_column("", style="bold cyan", no_wrap=True)
    for name in column_names(reports):
        table.add_column(escape(name), justify="right", overflow="fold")
    for label, cells, marks in compare_rows(reports):
        table.add_row(label, *[f"[bold green]{escape(c)} *[/bold green]" if m else escape(c)
                               for c, m in zip(cells, marks)])  # fmt: skip
    return table


def compare_markdown(reports: list[dict]) -> str:
    rows = [[label, *[f"**{c}**" if m else c for c, m in zip(cells, marks)]]
            for label, cells, marks in compare_rows(reports)]  # fmt: skip
    return md_table(["", *column_names(reports)], rows)
