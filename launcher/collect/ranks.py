"""Per-rank and per-node numbers from merged train records: throughput, step time, stragglers, and
whether DDP ranks hold the same parameters (their param_checksum at every logged step).

A train record covers the window since the rank's previous record (or the step it resumed from):
its `step_seconds` is the window's seconds per optimizer step and `samples_per_s`/`tokens_per_s` the
window's rates, so a rank's run-long rate is the time-weighted mean of its windows' rates. A window
that spans an evaluation or a checkpoint has that time taken out: these are training numbers.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from launcher.collect.records import attempt_of

DEFAULT_STRAGGLER_MARGIN = 0.2  # a rank whose mean step time is >20% above the median is a straggler
SYNC_RTOL = 1e-12  # checksums are float64 sums of bitwise-equal parameters on synchronised ranks


def rank_windows(records: list[dict]) -> dict[int, dict]:
    """rank -> totals over its train windows (records already merged and in step order)."""
    totals: dict[int, dict] = {}
    previous: dict[int, int] = {}
    evaluating: dict[int, float] = defaultdict(float)  # eval seconds inside the rank's current window
    for record in records:
        rank = record.get("rank")
        if not isinstance(rank, int):
            continue
        if record["type"] == "resume" and isinstance(record.get("step"), int):
            previous[rank] = record["step"]
            evaluating[rank] = 0.0
            continue
        if record["type"] in ("eval", "checkpoint") and isinstance(record.get("seconds"), (int, float)):
            evaluating[rank] += float(record["seconds"])
            continue
        if record["type"] != "train" or not isinstance(record.get("step"), int):
            continue
        own = totals.setdefault(rank, {"node": record.get("node"), "host": record.get("host"), "records": 0,
                                       "last_step": 0, "steps": 0, "seconds": 0.0, "samples": 0.0, "tokens": 0.0,
                                       "attempt": attempt_of(record)})  # fmt: skip
        steps = max(record["step"] - previous.get(rank, 0), 1)
        previous[rank] = record["step"]
        window = float(record.get("step_seconds") or 0.0) * steps
        training = window - min(evaluating.pop(rank, 0.0), 0.9 * window)
        own["records"] += 1
        own["last_step"] = max(own["last_step"], record["step"])
        own["steps"] += steps
        own["seconds"] += training
        own["samples"] += float(record.get("samples_per_s") or 0.0) * window
        own["tokens"] += float(record.get("tokens_per_s") or 0.0) * window
        own.update(node=record.get("node", own["node"]), host=record.get("host", own["host"]),
                   attempt=max(own["attempt"], attempt_of(record)))  # fmt: skip
    return totals


def flag_stragglers(mean_step_seconds: dict[int, float], margin: float) -> tuple[float | None, list[int]]:
    """(median mean step time, ranks slower than the median by more than `margin`, e.g. 0.2 = 20%)."""
    values = [v for v in mean_step_seconds.values() if v > 0]
    if len(values) < 2:
        return (values[0] if values else None), []
    median = statistics.median(values)
    slow = [rank for rank, value in sorted(mean_step_seconds.items()) if value > median * (1 + margin)]
    return median, slow


def rank_summaries(records: list[dict], margin: float = DEFAULT_STRAGGLER_MARGIN) -> tuple[list[dict], dict]:
    """([one summary per rank], {"margin", "median_step_seconds", "ranks"}) from merged records."""
    totals = rank_windows(records)
    means = {rank: t["seconds"] / t["steps"] for rank, t in totals.items() if t["steps"]}
    median, slow = flag_stragglers(means, margin)
    summaries = []
    for rank, t in sorted(totals.items()):
        mean = means.get(rank)
        summaries.append({
            "rank": rank,
            "node": t["node"],
            "host": t["host"],
            "attempt": t["attempt"],
            "train_records": t["records"],
            "last_step": t["last_step"],
            "mean_step_seconds": round(mean, 5) if mean is not None else None,
            "vs_median": round(mean / median - 1, 4) if mean and median else None,
            "straggler": rank in slow,
            "samples_per_s": round(t["samples"] / t["seconds"], 3) if t["seconds"] else 0.0,
            "tokens_per_s": round(t["tokens"] / t["seconds"], 1) if t["seconds"] else 0.0,
        })  # fmt: skip
    median_out = round(median, 5) if median is not None else None
    return summaries, {"margin": margin, "median_step_seconds": median_out, "ranks": slow}


def node_summaries(ranks: list[dict]) -> list[dict]:
    """Per node: its ranks' throughput summed; steps seen; mean of its ranks' mean step times."""
    grouped: dict[int, list[dict]] = defaultdict(list)
    for summary in ranks:
        grouped[summary["node"] if isinstance(summary["node"], int) else -1].append(summary)
    nodes = []
    for node, members in sorted(grouped.items()):
        means = [m["mean_step_seconds"] for m in members if m["mean_step_seconds"] is not None]
        nodes.append({
            "node": node,
            "hosts": sorted({str(m["host"]) for m in members}),
            "ranks": [m["rank"] for m in members],
            "last_step": max(m["last_step"] for m in members),
            "mean_step_seconds": round(sum(means) / len(means), 5) if means else None,
            "samples_per_s": round(sum(m["samples_per_s"] for m in members), 3),
            "tokens_per_s": round(sum(m["tokens_per_s"] for m in members), 1),
            "stragglers": [m["rank"] for m in members if m["straggler"]],
        })  # fmt: skip
    return nodes


def totals(nodes: list[dict]) -> dict:
    """Run throughput: the sum over nodes (each already the sum over its ranks)."""
    return {
        "samples_per_s": round(sum(n["samples_per_s"] for n in nodes), 3),
        "tokens_per_s": round(sum(n["tokens_per_s"] for n in nodes), 1),
    }


def sync_check(records: list[dict]) -> dict:
    """Do the ranks hold the same parameters at every logged step (DDP param_checksum)?"""
    by_step: dict[int, dict[int, float]] = defaultdict(dict)
    for record in records:
        if record["type"] == "train" and isinstance(record.get("param_checksum"), (int, float)):
            by_step[record["step"]][record["rank"]] = float(record["param_checksum"])
    compared = {step: sums for step, sums in by_step.items() if len(sums) >= 2}
    if not compared:
        if by_step:
            reason = "only one rank logged checksums"
        elif any(r["type"] == "train" for r in records):
            reason = "no param checksums logged (DeepSpeed ZeRO shards the parameters)"
        else:
            reason = "no train records yet"
        return {"synchronised": None, "first_divergence_step": None, "steps_checked": 0, "reason": reason}
    first = None
    worst = 0.0
    for step in sorted(compared):
        values = list(compared[step].values())
        spread = (max(values) - min(values)) / max(abs(max(values)), abs(min(values)), 1e-30)
        worst = max(worst, spread)
        if spread > SYNC_RTOL and first is None:
            first = step
    return {
        "synchronised": first is None,
        "first_divergence_step": first,
        "steps_checked": len(compared),
        "max_relative_difference": worst,
        "ranks_per_step": max(len(s) for s in compared.values()),
    }
