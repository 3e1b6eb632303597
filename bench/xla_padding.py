"""Fixed vs dynamic padding on XLA (the TPU code path, on this CPU): graph compilations and wall time.

python bench/xla_padding.py [--rows 96] [--epochs 2] [--repeats 2]

Runs `ftlaunch submit --local` with cluster.accelerator: tpu from the torch-xla venv (built by
tests/xla_venv.py when absent), PJRT_DEVICE=CPU: the real MiniLM on the first --rows real MRPC rows,
batch 8, fp32, no evaluation, for --epochs epochs. Each run's compile counts come from its summary
record (launcher.train.xla.CompileWatch), its times from results.json and the command's wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OFFLINE, RECIPE, REPO, local_sets, median_spread, newest_run, records, write_result

sys.path.insert(0, str(REPO / "tests"))
from xla_venv import ensure_xla_venv, venv_path  # noqa: E402

MODES = {"max_length 128 (fixed shapes)": "max_length", "dynamic (pad per batch)": "dynamic"}


def cpu_flags() -> list[str]:
    """The CPU features that decide bf16/AMX speed here, as the README's tables record them."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({flag for flag in flags.split() if flag in ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512f")})


def one(python: Path, padding: str, rows: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        args = ["submit", RECIPE, "--local", *local_sets(out, **{
            "cluster.accelerator": "tpu", "data.padding": padding, "data.max_train_samples": rows,
            "train.epochs": epochs, "train.per_device_batch_size": 8, "train.logging_steps": rows // 8,
            "train.eval_strategy": "no", "data.eval_split": "null", "train.precision": "no"})]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run([str(python), "-m", "launcher", *map(str, args)], capture_output=True, text=True,
                                env={**os.environ, **OFFLINE, "PJRT_DEVICE": "CPU"}, cwd=REPO, timeout=7200)  # fmt: skip
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{padding} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        run = newest_run(out)
        (summary,) = records(run, "summary")
        last = records(run, "train")[-1]  # the last epoch's window: steady state for fixed shapes
        results = json.loads((run / "results.json").read_text())
        return {"compiles": summary["xla_compiles"], "after_first_epoch": summary["xla_compiles_after_first_epoch"],
                "by_epoch": summary["xla_compiles_by_epoch"], "train_seconds": results["train_seconds"],
                "wall_seconds": round(wall, 2), "last_epoch_step_seconds": last["step_seconds"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    python = ensure_xla_venv()
    stamp = json.loads((venv_path() / "ftlaunch-xla-venv.json").read_text())
    rows = {}
    for name, padding in MODES.items():
        runs = [one(python, padding, args.rows, args.epochs) for _ in range(args.repeats)]
        rows[name] = {"runs": runs, **{key: median_spread([r[key] for r in runs]) for key in
                      ("compiles", "after_first_epoch", "train_seconds", "wall_seconds", "last_epoch_step_seconds")}}  # fmt: skip
    base = rows["max_length 128 (fixed shapes)"]["wall_seconds"]["median"]
    lines = ["| padding | XLA compilations (after epoch 1) | train s (median, min-max) | command wall s | "
             "s/step, last epoch | wall vs fixed |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        train, wall = row["train_seconds"], row["wall_seconds"]
        lines.append(f"| {name} | {row['compiles']['median']:.0f} ({row['after_first_epoch']['median']:.0f}) "
                     f"| {train['median']:.1f} ({train['min']:.1f}-{train['max']:.1f}) | {wall['median']:.1f} "
                     f"| {row['last_epoch_step_seconds']['median']:.3f} | {wall['median'] / base:.2f}x |")  # fmt: skip
    steps = (args.rows // 8) * args.epochs
    payload = {"rows": args.rows, "epochs": args.epochs, "steps": steps, "repeats": args.repeats,
               "cpu_flags": cpu_flags(), "xla_venv": stamp, "results": rows}  # fmt: skip
    write_result("xla_padding", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
