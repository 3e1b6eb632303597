"""Scale shape: 1 x 1, 1 x 2 and 2 x 1 local layouts at the same global batch (16).
On a 2-core CPU machine this measures the overhead of more processes, not a speed-up.

python bench/scale_shape.py [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import RECIPE, local_sets, median_spread, newest_run, records, run_ftlaunch, write_result

LAYOUTS = {"1 x 1": (1, 1, 16), "1 x 2": (1, 2, 8), "2 x 1": (2, 1, 8)}  # nodes, procs per node, per-device batch


def one(nodes: int, procs: int, batch: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        run_ftlaunch("submit", RECIPE, "--local", "--nodes", nodes, "--procs-per-node", procs, *local_sets(out, **{
            "train.max_steps": steps, "train.logging_steps": 10, "train.per_device_batch_size": batch,
            "train.precision": "no"}))  # fmt: skip
        run = newest_run(out)
        train = [r for r in records(run, "train") if r["rank"] == 0][1:]
        metrics = json.loads((run / "results.json").read_text())["final_eval"]["metrics"]
        return {"step_seconds": statistics.mean(r["step_seconds"] for r in train), "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for name, (nodes, procs, batch) in LAYOUTS.items():
        runs = [one(nodes, procs, batch, args.steps) for _ in range(args.repeats)]
        rows[name] = {"step_seconds": median_spread([r["step_seconds"] for r in runs]), "metrics": runs[0]["metrics"],
                      "metrics_identical_across_repeats": all(r["metrics"] == runs[0]["metrics"] for r in runs)}  # fmt: skip
    lines = ["| layout (nodes x procs) | per-device batch | s/step (median, min-max) | val acc / F1 after the run |", "|---|---|---|---|"]
    for name, row in rows.items():
        step, m = row["step_seconds"], row["metrics"]
        lines.append(f"| {name} | {LAYOUTS[name][2]} | {step['median']:.3f} ({step['min']:.3f}-{step['max']:.3f}) "
                     f"| {100 * m['validation_accuracy']:.2f} / {100 * m['validation_f1']:.2f} |")  # fmt: skip
    write_result("scale_shape", {"steps": args.steps, "repeats": args.repeats, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
