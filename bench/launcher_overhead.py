"""The launcher's own overhead: dry run and validate vs accelerate's CLI start, and the time from
`ftlaunch submit --local` to the first optimizer step.

python bench/launcher_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OFFLINE, RECIPE, REPO, local_sets, median_spread, newest_run, records, write_result

BIN = Path(sys.executable).parent


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO, env={**os.environ, **OFFLINE})
    return time.perf_counter() - started


def first_step_seconds() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        started = time.time()
        subprocess.run([str(BIN / "ftlaunch"), "submit", str(RECIPE), "--local",
                        *local_sets(out, **{"train.max_steps": 2, "train.logging_steps": 1, "train.eval_strategy": "no"})],
                       check=True, capture_output=True, cwd=REPO, env={**os.environ, **OFFLINE})  # fmt: skip
        first = min(r for r in records(newest_run(out), "train") if r["step"] == 1)
        # the record is written after step 1; take off that step's own duration
        return first["time"] - first["step_seconds"] - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "ftlaunch submit --dry-run (2 nodes x 4 GPUs)": [str(BIN / "ftlaunch"), "submit", str(RECIPE), "--dry-run",
                                                             "--nodes", "2", "--gpus-per-node", "4", "--set", f"output_dir={tmp}"],
            "ftlaunch validate": [str(BIN / "ftlaunch"), "validate", str(RECIPE)],
            "accelerate launch --help": [str(BIN / "accelerate"), "launch", "--help"],
            "accelerate env": [str(BIN / "accelerate"), "env"],
        }  # fmt: skip
        timings = {name: median_spread([timed(cmd) for _ in range(args.repeats)]) for name, cmd in commands.items()}
    timings["submit --local to first optimizer step"] = median_spread([first_step_seconds() for _ in range(3)])
    reference = timings["accelerate launch --help"]["median"]
    lines = ["| command | median s | min-max | vs accelerate launch --help |", "|---|---|---|---|"]
    for name, row in timings.items():
        lines.append(f"| {name} | {row['median']:.3f} | {row['min']:.3f}-{row['max']:.3f} | {row['median'] / reference:.2f}x |")
    write_result("launcher_overhead", {"repeats": args.repeats, "timings": timings}, "\n".join(lines))


if __name__ == "__main__":
    main()
