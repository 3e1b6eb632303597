"""Quality and speed: ftlaunch vs the HF Trainer on real MRPC, same model (MiniLM), same settings
(3 epochs, batch 8, lr 5e-5, linear schedule, seed 42, dynamic padding), fp32 and bf16.

python bench/trainer_vs_ftlaunch.py [--precisions no,bf16] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import OFFLINE, RECIPE, REPO, RESULTS, local_sets, newest_run, run_ftlaunch, write_result


def trainer(precision: str, epochs: float, reuse: bool) -> dict:
    """The Trainer baseline; with --reuse-trainer, an earlier measurement on this machine is taken."""
    saved = RESULTS / f"trainer_{precision}_{epochs}ep.json"
    if reuse and saved.exists():
        return json.loads(saved.read_text())
    result = _run_trainer(precision, epochs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_trainer(precision: str, epochs: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trainer.json"
        subprocess.run([sys.executable, str(REPO / "bench" / "hf_trainer_baseline.py"), "--precision", precision,
                        "--epochs", str(epochs), "--out", str(out)], check=True, cwd=REPO / "bench",
                       env={**__import__("os").environ, **OFFLINE})  # fmt: skip
        return json.loads(out.read_text())


def ftlaunch(precision: str, epochs: int, group_by_length: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        _, wall = run_ftlaunch("submit", RECIPE, "--local", *local_sets(
            out, **{"train.precision": precision, "train.epochs": epochs, "train.logging_steps": 50,
                    "data.group_by_length": str(group_by_length).lower()}))  # fmt: skip
        results = json.loads((newest_run(out) / "results.json").read_text())
        metrics = results["final_eval"]["metrics"]
        return {"train_seconds": results["train_seconds"], "wall_seconds": round(wall, 2),
                "validation_accuracy": metrics["validation_accuracy"], "validation_f1": metrics["validation_f1"],
                "steps": results["steps"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precisions", default="no,bf16")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--random-batches-for", default="no",
                        help="precisions for which ftlaunch also runs with random (not length-grouped) batches")
    parser.add_argument("--reuse-trainer", action="store_true", help="reuse Trainer results measured earlier here")
    args = parser.parse_args()
    rows = []
    for precision in args.precisions.split(","):
        hf = trainer(precision, args.epochs, args.reuse_trainer)
        for grouped in (True, False) if precision in args.random_batches_for.split(",") else (True,):
            ours = ftlaunch(precision, args.epochs, grouped)
            rows.append({"precision": precision, "group_by_length": grouped, "trainer": hf, "ftlaunch": ours,
                         "speedup": round(hf["train_seconds"] / ours["train_seconds"], 3)})  # fmt: skip
    lines = ["| precision | ftlaunch batching | Trainer acc / F1 | ftlaunch acc / F1 | Trainer train s | ftlaunch train s | speed-up |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        hf, ours = row["trainer"], row["ftlaunch"]
        lines.append(
            f"| {row['precision']} | {'length-grouped' if row['group_by_length'] else 'random'} "
            f"| {100 * hf['validation_accuracy']:.2f} / {100 * hf['validation_f1']:.2f} "
            f"| {100 * ours['validation_accuracy']:.2f} / {100 * ours['validation_f1']:.2f} "
            f"| {hf['train_seconds']:.1f} | {ours['train_seconds']:.1f} | {row['speedup']:.2f}x |"
        )
    write_result("trainer_vs_ftlaunch", {"epochs": args.epochs, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
