"""What an fp32 CPU step spends beyond the model's math, and what ftlaunch's three fixes buy.

    python bench/cpu_kernels.py          # ~5 min: GEMM throughput, then MiniLM steps x 5 variants x 3 rounds

1. GEMM GFLOP/s on MiniLM's linear shapes (512 tokens = batch 8 x 64): torch's default (MKL's sgemm),
   oneDNN (what train.cpu_linear=onednn runs) and numpy's OpenBLAS, same matrices, same threads.
2. MiniLM forward + backward + fused AdamW on one fixed batch (8 x 64 tokens, fp32, dropout on), each
   variant in its own process (the memory settings apply before torch starts), interleaved over rounds:
   s/step, minor page faults and system time per step, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import REPO, minilm_dir, write_result

VARIANTS = {  # name: (keep freed memory, oneDNN linear, numpy dropout masks)
    "torch defaults": (False, False, False),
    "memory kept": (True, False, False),
    "oneDNN linear": (False, True, False),
    "numpy dropout": (False, False, True),
    "all three (ftlaunch)": (True, True, True),
}

STEP = """
import json, resource, sys, time
keep, onednn, numpy_dropout = (flag == "1" for flag in sys.argv[1:4])
model_dir, steps = sys.argv[4], int(sys.argv[5])
if keep:  # before torch starts, as each rank does; otherwise glibc's and torch's defaults
    from launcher.train.memory import keep_freed_memory
    assert keep_freed_memory()
import torch
from transformers import AutoModelForSequenceClassification
from launcher.train.cpu_dropout import use_numpy_dropout
from launcher.train.cpu_kernels import route_linears_to_onednn
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).train()
if onednn:
    route_linears_to_onednn(model)
if numpy_dropout:
    use_numpy_dropout(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
ids = torch.randint(1000, 30000, (8, 64), generator=torch.Generator().manual_seed(1))
mask = torch.ones(8, 64, dtype=torch.long); mask[:4, 50:] = 0
labels = torch.tensor([0, 1] * 4)
def step():
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    optimizer.step(); optimizer.zero_grad()
for _ in range(5):
    step()
r0, times = resource.getrusage(resource.RUSAGE_SELF), []
for _ in range(steps):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s_per_step": sorted(times)[len(times) // 2], "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps, "max_rss_mib": r1.ru_maxrss // 1024}))
"""


def gemm() -> list[dict]:
    import numpy as np
    import torch

    from launcher.train.cpu_kernels import _onednn_matmul

    def gflops(fn, flop: int) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(20):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return round(flop / statistics.median(times) / 1e9, 1)

    rows = []
    for m, k, n in [(512, 384, 384), (512, 384, 1536), (512, 1536, 384), (2048, 2048, 2048)]:
        a, w = torch.randn(m, k), torch.randn(n, k)
        an, wn = a.numpy(), np.ascontiguousarray(w.numpy().T)
        flop = 2 * m * k * n
        rows.append({"shape": f"{m}x{k} @ {k}x{n}", "mkl": gflops(lambda: torch.nn.functional.linear(a, w), flop),
                     "onednn": gflops(lambda: _onednn_matmul(a, w, None), flop), "openblas": gflops(lambda: an @ wn, flop)})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--name", default="cpu_kernels", help="results file name (one per CPU kind)")
    args = parser.parse_args()
    gemms = gemm()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):  # A B C D A B C D ...
        for name, flags in VARIANTS.items():
            out = subprocess.run([sys.executable, "-c", STEP, *(str(int(flag)) for flag in flags), str(minilm_dir()),
                                  str(args.steps)], capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    lines = ["| shape (fp32, all cores) | torch default (MKL) GFLOP/s | oneDNN GFLOP/s | numpy (OpenBLAS) GFLOP/s |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['shape']} | {r['mkl']} | {r['onednn']} | {r['openblas']} |" for r in gemms]
    lines += ["", "| MiniLM step, batch 8 x 64, fp32 | s/step (median of rounds, min-max) | vs defaults | page faults/step | system s/step | peak RSS MiB |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    base = statistics.median(r["s_per_step"] for r in runs["torch defaults"])
    for name, rows in runs.items():
        step = [r["s_per_step"] for r in rows]
        lines.append(f"| {name} | {statistics.median(step):.3f} ({min(step):.3f}-{max(step):.3f}) | {base / statistics.median(step):.2f}x "
                     f"| {statistics.median(r['faults_per_step'] for r in rows):.0f} | {statistics.median(r['sys_s_per_step'] for r in rows):.3f} "
                     f"| {max(r['max_rss_mib'] for r in rows)} |")  # fmt: skip
    write_result(args.name, {"gemm": gemms, "steps": runs, "rounds": args.rounds}, "\n".join(lines))


if __name__ == "__main__":
    main()
