"""The run report (report.json): what a run did, from its files and its merged metric records.

Sections: run, state, config, eval (final, best, history), train, throughput, time, restarts,
sync, stragglers, nodes, ranks, checkpoints, records. Every value is plain JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from launcher.collect import ranks as rank_stats
from launcher.collect.records import RecordSet, attempt_of, by_type, resume_steps
from launcher.collect.xla import xla_section
from launcher.recipe.schema import metric_goal
from launcher.rundir.checkpoints import checkpoint_dirs, read_manifest
from launcher.rundir.durable import read_json
from launcher.rundir.layout import JOB_FILE, PLAN_FILE, RESULTS_FILE
from launcher.rundir.status import read_statuses, state_word


def read_recipe(run_dir: Path) -> dict:
    """The resolved recipe as plain data (not re-validated: an old run still reports)."""
    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def state_section(run_dir: Path, plan: dict, results: dict | None, merged: list[dict]) -> dict:
    """done | failed | stopped | running | unknown, from the status files and results.json."""
    nodes = {n: state_word(d) for n, d in read_statuses(run_dir, "node").items()}
    ranks = read_statuses(run_dir, "rank")
    rank_words = {r: state_word(d) for r, d in ranks.items()}
    words = set(nodes.values()) | set(rank_words.values())
    errors = [d["error"] if str(d["error"]).startswith(f"node {n}") else f"node {n}: {d['error']}"
              for n, d in read_statuses(run_dir, "node").items() if d.get("error")]  # fmt: skip
    errors += [f"rank {r}: {d['error']}" for r, d in ranks.items() if d.get("error")]
    if "failed" in words:
        state = "failed"
    elif "stopped" in words:
        state = "stopped"
    elif results is not None:
        state = "done"  # rank 0 collects right after writing results.json, before the status files say done
    elif words & {"running", "joining", "starting"}:
        state = "running"
    elif not words:
        state = "not started" if not merged else "unknown"
    else:
        state = sorted(words)[0]
    notes = []
    if plan.get("entrypoint"):
        notes.append("a user script: ftlaunch knows its exit status per node and its logs, not its metrics "
                     "(see the script section, logs/node-N.log and any files it wrote)")  # fmt: skip
    elif results is None:
        notes.append("no results.json: the run has not finished, or ended before its final evaluation")
    world = plan.get("world_size")
    summarised = {r["rank"] for r in by_type(merged, "summary")}
    if results is not None and isinstance(world, int) and len(summarised) < world:
        missing = sorted(set(range(world)) - summarised)
        notes.append(f"no summary record from rank(s) {', '.join(map(str, missing))}")
    return {
        "state": state,
        "complete": results is not None,
        "nodes": {str(n): w for n, w in nodes.items()},
        "ranks": {str(r): w for r, w in rank_words.items()},
        "errors": errors,
        "notes": notes,
    }


def eval_section(merged: list[dict], results: dict | None) -> dict:
    """Final and best eval metrics (named split_metric), from the lowest rank that logged evals
    (every rank logs the same gathered metrics); results.json's final eval when no records have one."""
    evals = by_type(merged, "eval")
    if evals:
        first_rank = min(r.get("rank", 0) for r in evals)
        evals = [r for r in evals if r.get("rank", 0) == first_rank]
    history = [{"step": r.get("step"), "epoch": r.get("epoch"), "rows": r.get("rows"),
                "metrics": r.get("metrics") or {}, "baseline": r.get("baseline"),
                "predicted_per_class": r.get("predicted_per_class")} for r in evals]  # fmt: skip
    if not history and results and results.get("final_eval"):
        final_eval = results["final_eval"]
        history = [{key: final_eval.get(key) for key in ("step", "epoch", "rows", "metrics")}]
    if not history:
        return {"final": None, "best": {}, "rows": None, "count": 0, "history": [], "baseline": None, "warnings": []}
    final = history[-1]
    warnings = []
    predicted = final.get("predicted_per_class") or []
    if sum(1 for n in predicted if n) == 1:
        only = next(index for index, n in enumerate(predicted) if n)
        warnings.append(f"the final model predicts class {only} for every one of the {final.get('rows')} eval rows: "
                        "it has not learned to tell the classes apart (train longer, or try another lr)")  # fmt: skip
    best = {}
    for name in sorted({name for h in history for name in h["metrics"]}):
        scored = [(h["metrics"][name], h) for h in history if isinstance(h["metrics"].get(name), (int, float))]
        if not scored:
            continue
        mode = metric_goal(name)
        value, where = (min if mode == "min" else max)(scored, key=lambda item: item[0])
        best[name] = {"value": value, "step": where["step"], "epoch": where["epoch"], "mode": mode}
    return {"final": final, "best": best, "rows": final.get("rows"), "count": len(history), "history": history,
            "baseline": final.get("baseline"), "warnings": warnings}  # fmt: skip


def train_section(merged: list[dict], plan: dict, results: dict | None) -> dict:
    train = by_type(merged, "train")
    setups = by_type(merged, "setup")
    summaries = by_type(merged, "summary")
    last_step = max((r["step"] for r in train), default=0)
    at_last = [r["loss"] for r in train if r["step"] == last_step and isinstance(r.get("loss"), (int, float))]
    planned = plan.get("total_steps") or next((s.get("total_steps") for s in setups if s.get("total_steps")), None)
    seconds = results.get("train_seconds") if results else None
    if seconds is None and summaries:
        seconds = max(s.get("train_seconds") or 0.0 for s in summaries)
    return {
        "last_step": last_step,
        "planned_steps": planned,
        "logged_steps": len({r["step"] for r in train}),
        "final_loss": round(sum(at_last) / len(at_last), 6) if at_last else None,
        "train_seconds": seconds,
        "samples": sum(s.get("samples") or 0 for s in summaries) or None,
        "epochs": results.get("epochs") if results else max((s.get("epochs") or 0 for s in summaries), default=None),
    }


def time_section(records: list[dict], results: dict | None) -> dict:
    """Wall time from the first record to the last (every attempt), beside results.json's own."""
    times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
    first, last = (min(times), max(times)) if times else (None, None)
    return {
        "first_record": first,
        "last_record": last,
        "wall_seconds": round(last - first, 3) if times else None,
        "results_wall_seconds": results.get("wall_seconds") if results else None,
    }


def config_section(plan: dict, recipe: dict, setups: list[dict]) -> dict:
    train = recipe.get("train") or {}
    world = plan.get("world_size") or next((s.get("world_size") for s in setups), None)
    backend = plan.get("backend")
    if backend == "deepspeed":
        backend = f"deepspeed ZeRO-{plan.get('zero_stage')}"
    return {
        "world_size": world,
        "nodes": plan.get("nodes"),
        "procs_per_node": plan.get("procs_per_node"),
        "effective_batch_size": plan.get("effective_batch_size"),
        "per_device_batch_size": plan.get("per_device_batch_size"),
        "gradient_accumulation_steps": plan.get("gradient_accumulation_steps"),
        "lr": train.get("lr"),
        "precision": plan.get("precision"),
        "padding": plan.get("padding"),
        "backend": backend,
        "device": plan.get("device"),
        "target": plan.get("target"),
    }


def checkpoint_section(run_dir: Path) -> dict:
    manifests = [read_manifest(checkpoint)[0] for checkpoint in checkpoint_dirs(run_dir)]
    steps = sorted(m["step"] for m in manifests if m and isinstance(m.get("step"), int))
    return {"count": len(steps), "steps": steps, "latest": steps[-1] if steps else None}


FTLAUNCH_FILES = {"recipe.yaml", "plan.json", "accelerate.yaml", "deepspeed.json", "sbatch.sh", "env.json", "job.json",
                  "results.json", "report.json", "report.md", "curves.png", "metrics.jsonl"}  # fmt: skip


def script_section(run_dir: Path, plan: dict) -> dict | None:
    """For a user's own script: what ran (copy + sha256), how each node ended, and what it left behind."""
    if not plan.get("entrypoint"):
        return None
    nodes = {str(n): {k: d.get(k) for k in ("state", "returncode", "exit_code", "rank", "error") if d.get(k) is not None}
             for n, d in read_statuses(run_dir, "node").items()}  # fmt: skip
    written = sorted(str(p.relative_to(run_dir)) for p in run_dir.iterdir() if p.is_file() and p.name not in FTLAUNCH_FILES)
    tensorboard = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("events.out.tfevents.*"))
    return {
        "manifest": read_json(run_dir / "script" / "manifest.json"),
        "nodes": nodes,
        "logs": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "logs").glob("*")),
        "files_written": written,
        "tensorboard": tensorboard,
    }


def attempt_layouts(records: list[dict]) -> list[dict]:
    """Each attempt's layout (from its ranks' setup records) and the step it started from: a run moved
    to other nodes x processes shows where it ran when."""
    resumed = resume_steps(records)
    layouts = []
    for attempt in sorted({attempt_of(r) for r in by_type(records, "setup")}):
        setups = [r for r in by_type(records, "setup") if attempt_of(r) == attempt]
        nodes = len({r.get("node") for r in setups})
        world = max((r.get("world_size") or 0 for r in setups), default=0)
        layouts.append({"attempt": attempt, "nodes": nodes, "procs_per_node": world // max(nodes, 1),
                        "world_size": world, "from_step": resumed.get(attempt, 0)})  # fmt: skip
    return layouts


def build_report(run_dir: Path, read: RecordSet, merged: list[dict], straggler_margin: float) -> dict:
    plan = read_json(run_dir / PLAN_FILE) or {}
    results = read_json(run_dir / RESULTS_FILE)
    job = read_json(run_dir / JOB_FILE) or {}
    ranks, stragglers = rank_stats.rank_summaries(merged, straggler_margin)
    nodes = rank_stats.node_summaries(ranks)
    attempts = sorted({attempt_of(r) for r in read.records})
    state = state_section(run_dir, plan, results, merged)
    for entry, kind, key in [(n, "nodes", "node") for n in nodes] + [(r, "ranks", "rank") for r in ranks]:
        entry["state"] = state[kind].get(str(entry[key]))
    return {
        "run": {
            "name": plan.get("name", run_dir.name),
            "run_dir": str(run_dir.resolve()),
            "job_id": job.get("job_id"),
            "collected": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "state": state,
        "script": script_section(run_dir, plan),
        "config": config_section(plan, read_recipe(run_dir), by_type(merged, "setup")),
        "eval": eval_section(merged, results),
        "train": train_section(merged, plan, results),
        "xla": xla_section(merged),
        "throughput": {**rank_stats.totals(nodes), "nodes": len(nodes)},
        "time": time_section(read.records, results),
        "restarts": max(attempts, default=0),
        "resumed_from": {str(a): s for a, s in resume_steps(read.records).items()},
        "attempts": attempt_layouts(read.records),
        "preemptions": [{"attempt": a, "step": s} for a, s in sorted({(attempt_of(r), r["step"])
                        for r in by_type(read.records, "preempted") if isinstance(r.get("step"), int)})],  # fmt: skip
        "sync": rank_stats.sync_check(merged),
        "stragglers": stragglers,
        "nodes": nodes,
        "ranks": ranks,
        "checkpoints": checkpoint_section(run_dir),
        "records": {
            "files": len(read.files),
            "read": len(read.records),
            "merged": len(merged),
            "dropped": len(read.records) - len(merged),
            "unreadable_lines": read.unreadable,
        },
    }
