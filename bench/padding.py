"""Padding cost: dynamic (random batches), dynamic with length-grouped batches, fixed max_length 128.

python bench/padding.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import RECIPE, local_sets, median_spread, newest_run, records, run_ftlaunch, write_result

MODES = {
    "dynamic, random batches": {"data.padding": "dynamic", "data.group_by_length": "false"},
    "dynamic, length-grouped": {"data.padding": "dynamic", "data.group_by_length": "true"},
    "max_length 128 (TPU shapes)": {"data.padding": "max_length", "data.max_length": 128, "data.group_by_length": "false"},
}


def one(fields: dict, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        run_ftlaunch("submit", RECIPE, "--local", *local_sets(out, **{
            "train.max_steps": steps, "train.logging_steps": 10, "train.eval_strategy": "no", "data.eval_split": "null",
            "train.precision": "no", **fields}))  # fmt: skip
        train = records(newest_run(out), "train")[1:]  # the first window includes warm-up
        return {"step_seconds": statistics.mean(r["step_seconds"] for r in train),
                "samples_per_s": statistics.mean(r["samples_per_s"] for r in train),
                "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in train)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for name, fields in MODES.items():
        runs = [one(fields, args.steps) for _ in range(args.repeats)]
        rows[name] = {key: median_spread([r[key] for r in runs]) for key in runs[0]}
    base = rows["dynamic, random batches"]["samples_per_s"]["median"]
    lines = ["| padding | s/step (median, min-max) | samples/s | vs dynamic random |", "|---|---|---|---|"]
    for name, row in rows.items():
        step = row["step_seconds"]
        lines.append(f"| {name} | {step['median']:.3f} ({step['min']:.3f}-{step['max']:.3f}) "
                     f"| {row['samples_per_s']['median']:.1f} | {row['samples_per_s']['median'] / base:.2f}x |")  # fmt: skip
    write_result("padding", {"steps": args.steps, "repeats": args.repeats, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
