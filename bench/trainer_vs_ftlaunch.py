"""Speed at equal quality: ftlaunch vs the HF Trainer on real MRPC, same model (MiniLM), the course's
settings (batch 8, lr 5e-5, linear schedule, no warmup, dynamic padding), run side by side and
interleaved (Trainer, ftlaunch, Trainer, ftlaunch, ...) so that the machine's noise hits both.

    python bench/trainer_vs_ftlaunch.py --form short              # 150 optimizer steps each, training time only
    python bench/trainer_vs_ftlaunch.py --form full --seeds 5      # 3 epochs per seed: metrics and time

--precisions no,bf16 (bf16 only where the CPU has native bf16); --ftlaunch-set key=value adds a
recipe override to every ftlaunch run (e.g. data.group_by_length=false for the Trainer's batching).
--variant NAME:KEY=VALUE,... adds an ftlaunch run with those overrides to every pair (what one change
buys, interleaved with the rest); a KEY of env.NAME sets an environment variable instead, e.g.
--variant no-malloc-tuning:env.FTL_KEEP_FREED_MEMORY=0 --variant mkl-linear:train.cpu_linear=aten.
--seed-list 45,46 runs those seeds only (a long form completed in two sittings).
--table results/NAME.json prints a stored result's table (variants with their accuracy) without running;
several files of the same form and CPU print one table of all their pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import OFFLINE, RECIPE, REPO, cpu, local_sets, newest_run, run_ftlaunch, write_result

SHORT_STEPS = 150
SEEDS = (42, 43, 44, 45, 46)


def trainer(precision: str, seed: int, form: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trainer.json"
        extra = ["--max-steps", str(SHORT_STEPS), "--no-eval"] if form == "short" else ["--epochs", str(epochs)]
        subprocess.run([sys.executable, str(REPO / "bench" / "hf_trainer_baseline.py"), "--precision", precision,
                        "--seed", str(seed), "--out", str(out), *extra], check=True, cwd=REPO / "bench",
                       env={**os.environ, **OFFLINE}, capture_output=True)  # fmt: skip
        return json.loads(out.read_text())


def ftlaunch(precision: str, seed: int, form: str, epochs: int, sets: dict) -> dict:
    env = {key[4:]: value for key, value in sets.items() if key.startswith("env.")}
    sets = {key: value for key, value in sets.items() if not key.startswith("env.")}
    fields = {"train.precision": precision, "train.seed": seed, "train.logging_steps": 50, **sets}
    if form == "short":
        fields.update({"train.max_steps": SHORT_STEPS, "train.eval_strategy": "no", "data.eval_split": "null"})
    else:
        fields.update({"train.epochs": epochs})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs"
        _, wall = run_ftlaunch("submit", RECIPE, "--local", *local_sets(out, **fields), env=env)
        results = json.loads((newest_run(out) / "results.json").read_text())
        metrics = (results.get("final_eval") or {}).get("metrics", {})
        return {"train_seconds": results["train_seconds"], "wall_seconds": round(wall, 2), "steps": results["steps"],
                "validation_accuracy": metrics.get("validation_accuracy"), "validation_f1": metrics.get("validation_f1")}  # fmt: skip


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def quality(runs: list[dict]) -> str:
    acc = [r["validation_accuracy"] for r in runs if r["validation_accuracy"] is not None]
    f1 = [r["validation_f1"] for r in runs if r["validation_f1"] is not None]
    return f"{mean_spread(acc)} / {mean_spread(f1)}" if acc else "-"


def speedup(runs: list[dict]) -> str:
    values = [r["speedup"] for r in runs]
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def table(machine_cpu: dict, payload: dict) -> str:
    """The markdown table of one results payload: one row per precision, one more per variant."""
    form = (f"short ({SHORT_STEPS} optimizer steps, no evaluation)" if payload["form"] == "short"
            else f"full ({payload['epochs']} epochs, evaluation every epoch)")  # fmt: skip
    generation = f" ({machine_cpu['family_model']}, {'AVX-512' if machine_cpu.get('avx512f') else 'no AVX-512'})" \
        if "family_model" in machine_cpu else ""  # results written before it was recorded lack it
    code = f" Code: {', '.join(payload['commits'])}." if payload.get("commits") else ""  # several files' pairs
    lines = [f"CPU: {machine_cpu['model']}{generation}, {machine_cpu['cores']} cores; native bf16 flags: "
             f"{', '.join(machine_cpu['native_bf16']) or 'none'}; AMX: {', '.join(machine_cpu['amx']) or 'none'}. "
             f"Form: {form}. ftlaunch overrides: {payload['ftlaunch_sets'] or 'none'}; "
             f"variants: {payload['variants'] or 'none'}.{code}", "",
             "| precision | seeds | Trainer train s | ftlaunch train s | speed-up (median, min-max) | Trainer acc / F1 | ftlaunch acc / F1 |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in payload["rows"]:
        pairs = row["pairs"]
        lines.append(
            f"| {'fp32' if row['precision'] == 'no' else row['precision']} | {len(pairs)} "
            f"| {statistics.median(p['trainer']['train_seconds'] for p in pairs):.1f} "
            f"| {statistics.median(p['ftlaunch']['train_seconds'] for p in pairs):.1f} "
            f"| {speedup(pairs)} | {quality([p['trainer'] for p in pairs])} | {quality([p['ftlaunch'] for p in pairs])} |"
        )
        for name in payload["variants"]:
            runs = [p[name] for p in pairs]
            lines.append(f"| ... variant {name} | {len(runs)} | | {statistics.median(r['train_seconds'] for r in runs):.1f} "
                         f"| {speedup(runs)} | | {quality(runs)} |")
    return "\n".join(lines)


def merged(payloads: list[dict]) -> tuple[dict, dict]:
    """One payload of several results files' pairs, row by row; refused unless the files measured the
    same thing on the same CPU."""
    same = ("form", "epochs", "short_steps", "ftlaunch_sets", "variants")
    first = payloads[0]
    for other in payloads[1:]:
        differ = [k for k in same if other.get(k) != first.get(k)]
        if other["machine"]["cpu"] != first["machine"]["cpu"]:
            differ.append("CPU")
        if differ:
            sys.exit(f"--table: the files differ in {', '.join(differ)}: their pairs do not make one table")
    rows: dict[str, list] = {}
    for payload in payloads:
        for row in payload["rows"]:
            rows.setdefault(row["precision"], []).extend(row["pairs"])
    commits = sorted({payload["machine"].get("commit", "unrecorded") for payload in payloads})
    return first["machine"]["cpu"], {**first, "rows": [{"precision": k, "pairs": v} for k, v in rows.items()],
                                     "commits": commits}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--form", choices=["short", "full"], default="short")
    parser.add_argument("--precisions", default="no")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (full form: 5; short form: 3 pairs)")
    parser.add_argument("--seed-list", default=None, metavar="S,S,...", help="these seeds instead of the first --seeds")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ftlaunch-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    parser.add_argument("--name", default=None, help="results file name (default trainer_vs_ftlaunch_<form>)")
    parser.add_argument("--table", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="print the table of these results files' pairs, run nothing")  # fmt: skip
    args = parser.parse_args()
    if args.table:
        machine_cpu, payload = merged([json.loads(path.read_text()) for path in args.table])
        print(table(machine_cpu, payload))
        return
    sets = dict(item.split("=", 1) for item in args.ftlaunch_set)
    variants = {}
    for item in args.variant:
        name, _, overrides = item.partition(":")
        variants[name] = {**sets, **dict(pair.split("=", 1) for pair in overrides.split(","))}
    seeds = SEEDS[: args.seeds or (5 if args.form == "full" else 3)]
    if args.seed_list:
        seeds = [int(seed) for seed in args.seed_list.split(",")]
    machine_cpu = cpu()
    rows = []
    for precision in args.precisions.split(","):
        if precision == "bf16" and not machine_cpu["native_bf16"]:
            print("bf16 skipped: this CPU has no native bf16", file=sys.stderr)
            continue
        pairs = []
        for seed in seeds:  # A B A B: each pair runs back to back
            hf = trainer(precision, seed, args.form, args.epochs)
            ours = ftlaunch(precision, seed, args.form, args.epochs, sets)
            pairs.append({"seed": seed, "trainer": hf, "ftlaunch": ours,
                          "speedup": round(hf["train_seconds"] / ours["train_seconds"], 3)})  # fmt: skip
            for name, variant_sets in variants.items():
                other = ftlaunch(precision, seed, args.form, args.epochs, variant_sets)
                pairs[-1][name] = {**other, "speedup": round(hf["train_seconds"] / other["train_seconds"], 3)}
            print(json.dumps(pairs[-1]), flush=True)
        rows.append({"precision": precision, "pairs": pairs})
    payload = {"form": args.form, "variants": variants, "epochs": args.epochs, "short_steps": SHORT_STEPS, "ftlaunch_sets": sets, "rows": rows}
    write_result(args.name or f"trainer_vs_ftlaunch_{args.form}", payload, table(machine_cpu, payload))


if __name__ == "__main__":
    main()
