"""One run's report as text: report.md and rich tables on the terminal, from the same rows."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from launcher.collect.xla import xla_rows


def num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:,.{digits}f}"
    return str(value)


def rate(value) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _where(entry: dict) -> str:
    return f"step {entry.get('step')}, epoch {entry.get('epoch')}"


def seconds(value) -> str:
    return "-" if value is None else f"{num(value, 1)} s"


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """(key, value) rows: the report's first table, on the terminal and in report.md."""
    config, state, train, ev = report["config"], report["state"], report["train"], report["eval"]
    rows = [("run", f"{report['run']['name']}  ({report['run']['run_dir']})")]
    if report["run"].get("job_id"):
        rows.append(("job", str(report["run"]["job_id"])))
    rows.append(("state", state["state"] + ("" if state["complete"] else "  (PARTIAL: no final results)")))
    world = num(config["world_size"])
    shape = f"{num(config['nodes'])} node(s) x {num(config['procs_per_node'])} process(es)"
    rows.append(("world size", f"{world} = {shape}"))
    per_device, accumulation = num(config["per_device_batch_size"]), num(config["gradient_accumulation_steps"])
    batch = f"{num(config['effective_batch_size'])} = {per_device} per device x {accumulation} accumulation x {world}"
    rows.append(("effective batch", batch))
    rows.append(("lr", num(config["lr"])))
    rows += [(key, str(config[key])) for key in ("precision", "padding", "backend")]
    planned = f" of {train['planned_steps']} planned" if train["planned_steps"] else ""
    loss = num(train["final_loss"])
    logged = f"{train['logged_steps']} logged"
    rows.append(("steps", f"{train['last_step']}{planned} ({logged}), final train loss {loss}"))
    final = ev["final"]
    for name, value in (final["metrics"] if final else {}).items():
        rows.append((f"final {name}", f"{num(value)}  ({_where(final)})"))
    for name, best in ev["best"].items():
        rows.append((f"best {name}", f"{num(best['value'])}  ({_where(best)}, {best['mode']})"))
    baseline = ev.get("baseline")
    if baseline:
        scores = ", ".join(f"{name} {num(value)}" for name, value in baseline["metrics"].items())
        rows.append(("baseline", f"{scores}  (always class {baseline['majority_class']}: "
                                 f"{baseline['majority_rows']} of {num(ev['rows'])} rows)"))  # fmt: skip
    rows.append(("eval rows", f"{num(ev['rows'])} ({ev['count']} evaluation(s))"))
    rows += xla_rows(report)
    tp = report["throughput"]
    if tp["nodes"]:
        rates = f"{rate(tp['samples_per_s'])} samples/s, {rate(tp['tokens_per_s'])} tokens/s"
        rows.append(("throughput", f"{rates} (sum over {tp['nodes']} node(s))"))
    else:
        rows.append(("throughput", "- (no train records)"))
    rows.append(("wall time", _wall(report)))
    rows.append(("restarts", _restarts(report)))
    moved = layouts_text(report.get("attempts", []))
    if moved:
        rows.append(("layouts", moved))
    rows.append(("synchronised", _sync(report["sync"])))
    rows.append(("stragglers", _stragglers(report)))
    if report["checkpoints"]["count"]:
        rows.append(("checkpoints", f"{report['checkpoints']['count']}, latest step {report['checkpoints']['latest']}"))
    rec = report["records"]
    unreadable = f", {len(rec['unreadable_lines'])} unreadable line(s)" if rec["unreadable_lines"] else ""
    counts = f"{rec['read']} read from {rec['files']} rank file(s), {rec['merged']} merged, {rec['dropped']} dropped"
    rows.append(("records", counts + unreadable))
    curves = report.get("curves") or {}
    if curves.get("path"):
        shown = ", ".join(f"{k} {v}" for k, v in curves["series"].items())
        rows.append(("curves", f"{curves['path']} ({shown} points)"))
    rows += [("warning", w) for w in ev.get("warnings", [])]
    rows += [("error", e) for e in state["errors"]] + [("note", n) for n in state["notes"]]
    script = report.get("script")
    if script:
        manifest = script.get("manifest") or {}
        rows.append(("script", f"{manifest.get('source', '?')} (sha256 {str(manifest.get('sha256', '?'))[:12]})"))
        for node, info in sorted(script["nodes"].items()):
            rows.append((f"node {node}", ", ".join(f"{k} {v}" for k, v in info.items())))
        if script["files_written"] or script["tensorboard"]:
            rows.append(("script wrote", ", ".join(script["files_written"] + script["tensorboard"])))
    return rows


def _wall(report: dict) -> str:
    tm = report["time"]
    process = f" (training process: {seconds(tm['results_wall_seconds'])})" if tm["results_wall_seconds"] else ""
    last = " (last attempt)" if report["restarts"] else ""
    train = seconds(report["train"]["train_seconds"])
    return f"{seconds(tm['wall_seconds'])} first to last record{process}; train {train}{last}"


def layouts_text(attempts: list[dict]) -> str | None:
    """'attempt 0: 2 x 1 from the start; attempt 1: 1 x 1 from step 13', where the layout changed."""
    if len({(a["nodes"], a["procs_per_node"]) for a in attempts}) < 2:
        return None
    return "; ".join(f"attempt {a['attempt']}: {a['nodes']} node(s) x {a['procs_per_node']} process(es) "
                     + (f"from step {a['from_step']}" if a["from_step"] else "from the start") for a in attempts)  # fmt: skip


def _restarts(report: dict) -> str:
    resumed = ", ".join(f"attempt {a} from step {s}" for a, s in report["resumed_from"].items())
    stopped = ", ".join(f"attempt {p['attempt']} stopped at step {p['step']}" for p in report.get("preemptions", []))
    detail = "; ".join(part for part in (resumed, stopped) if part)
    return f"{report['restarts']}" + (f" ({detail})" if detail else "")


def _sync(sync: dict) -> str:
    if sync["synchronised"] is None:
        return f"n/a: {sync['reason']}"
    if sync["synchronised"]:
        return f"true (param checksums equal at all {sync['steps_checked']} logged steps)"
    return f"FALSE: ranks differ first at step {sync['first_divergence_step']}"


def _stragglers(report: dict) -> str:
    st = report["stragglers"]
    if st["median_step_seconds"] is None:
        return "n/a: no train records yet"
    flagged = ", ".join(f"rank {r['rank']} (+{r['vs_median']:.0%})" for r in report["ranks"] if r["straggler"])
    return f"{flagged or 'none'} (margin {st['margin']:.0%} over median step {num(st['median_step_seconds'])} s)"


NODE_HEADERS = ["node", "host", "ranks", "step", "step s", "samples/s", "tokens/s", "slow", "state"]
RANK_HEADERS = ["rank", "node", "att", "step", "step s", "vs med", "samples/s", "tokens/s", "slow", "state"]
HEADER_NOTE = ("step: last step logged; step s: mean seconds per optimizer step (eval time excluded); vs med: "
               "against the median rank; slow: straggler rank(s); att: attempt (restarts)")


def span(ranks: list[int]) -> str:
    """0,1,2,3 -> 0-3 (a node's ranks are contiguous)."""
    if len(ranks) > 2 and ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def node_rows(report: dict) -> list[list[str]]:
    return [[str(n["node"]), ",".join(n["hosts"]), span(n["ranks"]), str(n["last_step"]),
             num(n["mean_step_seconds"]), rate(n["samples_per_s"]), rate(n["tokens_per_s"]),
             ",".join(map(str, n["stragglers"])) or "-", str(n.get("state") or "-")]
            for n in report["nodes"]]  # fmt: skip


def rank_rows(report: dict) -> list[list[str]]:
    return [[str(r["rank"]), str(r["node"]), str(r["attempt"]), str(r["last_step"]),
             num(r["mean_step_seconds"]), "-" if r["vs_median"] is None else f"{r['vs_median']:+.1%}",
             rate(r["samples_per_s"]), rate(r["tokens_per_s"]), "YES" if r["straggler"] else "-",
             str(r.get("state") or "-")] for r in report["ranks"]]  # fmt: skip


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    summary = md_table(["", ""], [list(row) for row in summary_rows(report)])
    parts = [f"# ftlaunch report: {report['run']['name']}\n", summary]
    parts += ["\n## Nodes (throughput: sum over the node's ranks)\n", md_table(NODE_HEADERS, node_rows(report))]
    parts += ["\n## Ranks\n", md_table(RANK_HEADERS, rank_rows(report)), f"\n{HEADER_NOTE}\n"]
    if (report.get("curves") or {}).get("path"):
        parts.append(f"\n![curves]({report['curves']['path']})\n")
    return "".join(parts)


def rich_tables(report: dict) -> list[Table | Text]:
    """The summary, nodes and ranks tables, then a line explaining the column names."""
    summary = Table(title=f"ftlaunch report: {escape(report['run']['name'])}", show_header=False, title_justify="left")
    summary.add_column(style="bold cyan", no_wrap=True)
    summary.add_column(overflow="fold")
    for key, value in summary_rows(report):
        style = "bold red" if key == "error" or value.startswith(("FALSE", "failed")) else None
        summary.add_row(escape(key), escape(value), style=style)
    tables = [summary]
    sections = (("nodes", NODE_HEADERS, node_rows(report), [bool(n["stragglers"]) for n in report["nodes"]]),
                ("ranks", RANK_HEADERS, rank_rows(report), [r["straggler"] for r in report["ranks"]]))  # fmt: skip
    for title, headers, rows, slow in sections:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for header in headers:
            table.add_column(header, justify="left" if header in ("host", "state", "ranks") else "right", no_wrap=True)
        for row, flagged in zip(rows, slow):
            table.add_row(*map(escape, row), style="yellow" if flagged else None)
        tables.append(table)
    return [*tables, Text(HEADER_NOTE, style="dim")]
