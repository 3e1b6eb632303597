"""Helpers for the DeepSpeed end-to-end tests.

DeepSpeed on CPU JIT-compiles one C++ op the first time a process group starts on a machine (the
shared-memory collective, deepspeed.ops.comm.deepspeed_shm_comm_op: about 37 s here), cached in
~/.cache/torch_extensions (or $TORCH_EXTENSIONS_DIR). `build_deepspeed_comm_op()` pays that once,
serially, in a child process, before the first multi-process run of the session; every rank after
that loads the cached build. The optimizer ops (FusedAdam / DeepSpeedCPUAdam, about 50 s each) are
never built: the rendered deepspeed.json keeps the entrypoint's torch AdamW as a client optimizer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

_BUILT: dict[str, float] = {}

_BUILD = """
import time
started = time.perf_counter()
from deepspeed.comm.torch import build_shm_op
op = build_shm_op()
print("SECONDS", round(time.perf_counter() - started, 2), "BUILT", op is not None)
"""


def build_deepspeed_comm_op() -> float:
    """Build (or load the cached) DeepSpeed CPU comm op once per test session; seconds it took."""
    if "seconds" not in _BUILT:
        started = time.perf_counter()
        env = dict(os.environ, DS_ACCELERATOR="cpu")
        result = subprocess.run([sys.executable, "-c", _BUILD], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        _BUILT["seconds"] = round(time.perf_counter() - started, 1)
        print(f"\n[deepspeed] comm op ready in {_BUILT['seconds']} s (includes a first-time JIT compile if not cached)")
    return _BUILT["seconds"]


def losses_by_rank_step(records: list[dict]) -> dict[tuple[int, int], float]:
    return {(r["rank"], r["step"]): r["loss"] for r in records}


def job_samples_per_s(records: list[dict]) -> float:
    """Samples per second of the whole job: per rank, the median over steps after the first (which
    includes warm-up), summed over ranks."""
    per_rank: dict[int, list[float]] = {}
    for record in records:
        if record["step"] > 1:
            per_rank.setdefault(record["rank"], []).append(record["samples_per_s"])
    total = 0.0
    for values in per_rank.values():
        values.sort()
        total += values[len(values) // 2]
    return round(total, 1)
