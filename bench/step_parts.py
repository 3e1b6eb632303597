"""Where a MiniLM training step's time goes, fp32 and bf16, as ftlaunch trains on CPU, with and without
the kept word-embedding gradient (launcher.train.embedding_grad), or (--last-layer) with the packed
batch's last layer on every real token or on each row's first token only (launcher.train.packing), or
(--rows) with the kept gradient's row record or without it (whole-table zeroing, norm and scaling), or
(--ops) the shipped fp32 step under torch's profiler: time by op class, and the linear layers' matrix
products per shape against the same products run alone (how much of the step is the model's own math,
and how close to this CPU's matrix-product rate it runs; the profiler adds its own overhead).

    python bench/step_parts.py                 # ~8 min
    python bench/step_parts.py --last-layer    # ~8 min: fp32 (and bf16 where the CPU has it)
    python bench/step_parts.py --rows          # ~5 min: fp32
    python bench/step_parts.py --ops           # ~1 min: fp32

The same 45 random MRPC batches of 8 for every variant, packed (launcher.train.packing), numpy dropout
masks, glibc memory kept, the linear layers a run picks (bf16 autocast picks its own), ftlaunch's clipping at 1.0,
fused AdamW: ftlaunch's step without its loop. Each variant runs in its own process, interleaved over
rounds (A B C D A B C D ...): the mean step (what a run's time adds up to, stalls included), the
median step and its parts (forward, backward, clip, optimizer) in ms, over 40 steps after 5 warm-up steps. One more process per precision runs with ONEDNN_VERBOSE and sums the
time oneDNN reports for its matrix multiplies (bf16: every GEMM; fp32: the linear layers, not the
attention's batched products, which stay on MKL): what those GEMMs alone cost.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys

from common import REPO, minilm_dir, mrpc_dir, write_result

STEP = """
import json, random, statistics, sys, time
from launcher.train.memory import keep_freed_memory
assert keep_freed_memory()  # before torch, as each rank does
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from launcher.train.cpu_dropout import use_numpy_dropout
from launcher.train.cpu_kernels import choose_cpu_linear, route_linears_to_onednn
from launcher.train.embedding_grad import clip_grad_norm_, keep_embedding_gradients
from accelerate import Accelerator
accelerator = Accelerator(cpu=True)
from launcher.train.packing import use_packed_sequences
precision, kept, model_dir, mrpc, steps = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4], int(sys.argv[5])
last_layer_all_tokens = sys.argv[6] == "all"
whole_table = sys.argv[7] == "whole"  # the kept gradient's row record dropped after every backward
profiler = None
if sys.argv[8] == "ops":  # the steps after warm-up under torch's profiler, input shapes recorded
    from torch.profiler import ProfilerActivity, profile
    profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
rows = [json.loads(line) for line in open(mrpc + "/train.jsonl")]
order = random.Random(0)
batches = []
for _ in range(steps + 5):
    pick = order.sample(rows, 8)
    batch = dict(tokenizer([r["sentence1"] for r in pick], [r["sentence2"] for r in pick], truncation=True,
                           max_length=128, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([r["label"] for r in pick])
    batches.append(batch)
torch.manual_seed(0)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).train()
if precision == "fp32" and choose_cpu_linear("auto", "cpu", "no", "ddp") == "onednn":  # as a run picks it
    route_linears_to_onednn(model)
use_numpy_dropout(model)
assert use_packed_sequences(model) is None
if last_layer_all_tokens:  # the layer's own forward: every real token through the whole last layer
    model.bert.encoder.layer[-1].__dict__.pop("forward")
if kept:
    assert keep_embedding_gradients(model) == ["bert.embeddings.word_embeddings"]
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
parts = {"forward": [], "backward": [], "clip": [], "optimizer": [], "step": []}
for index, batch in enumerate(batches):
    if index == 5 and profiler is not None:
        profiler.__enter__()
    torch.manual_seed(index)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(**batch).loss
    t1 = time.perf_counter()
    loss.backward()
    if whole_table:
        model.bert.embeddings.word_embeddings._ftl_kept_gradient.forget()
    t2 = time.perf_counter()
    clip_grad_norm_(accelerator, model.parameters(), 1.0)
    t3 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    if index >= 5:
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            parts[name].append(seconds)
result = {name: round(statistics.median(values) * 1000, 2) for name, values in parts.items()}
result["mean_step"] = round(statistics.mean(parts["step"]) * 1000, 2)  # what a run's time adds up: stalls included
if profiler is not None:
    profiler.__exit__(None, None, None)
    result["ops"] = [{"name": e.key, "shapes": e.input_shapes, "calls": e.count, "self_us": e.self_cpu_time_total}
                     for e in profiler.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
print(json.dumps(result))
"""


def run(precision: str, kept: bool, steps: int, env: dict | None = None, last_layer: str = "first",
        table: str = "rows", ops: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    return subprocess.run([sys.executable, "-c", STEP, precision, str(int(kept)), str(minilm_dir()), str(mrpc_dir()), str(steps),
                           last_layer, table, "ops" if ops else "-"], capture_output=True, text=True, check=True, cwd=REPO, env={**os.environ, **(env or {})})  # fmt: skip


def interleaved(rounds: int, variants: dict) -> dict:
    """key -> run()'s keyword arguments; each variant in its own process, A B C A B C ... over rounds.
    Returns key -> one result per round."""
    results = {key: [] for key in variants}
    for _ in range(rounds):
        for key, kwargs in variants.items():
            results[key].append(json.loads(run(**kwargs).stdout.strip().splitlines()[-1]))
            print(key, results[key][-1], flush=True)
    return results


def timing_cells(results: list[dict]) -> str:
    """Mean step (median over rounds, min-max), then the median step and its parts, in ms, as table cells."""
    step = [r["mean_step"] for r in results]
    part = {name: statistics.median(r[name] for r in results) for name in ("step", "forward", "backward", "clip", "optimizer")}
    return (f"{statistics.median(step):.1f} ({min(step):.1f}-{max(step):.1f}) | {part['step']:.1f} | {part['forward']:.1f} "
            f"| {part['backward']:.1f} | {part['clip']:.1f} | {part['optimizer']:.1f}")  # fmt: skip


def last_layer_study(rounds: int, steps: int) -> None:
    """Packed steps with the last layer on every real token vs on each row's first token (kept gradient on)."""
    from launcher.cpu import native_bf16

    precisions = ("fp32", "bf16") if native_bf16() else ("fp32",)  # bf16 autocast without native bf16: 5x slower
    variants = interleaved(rounds, {(p, layer): {"precision": p, "kept": True, "steps": steps, "last_layer": layer}
                                    for p in precisions for layer in ("all", "first")})  # fmt: skip
    lines = ["| precision | last layer | mean step ms (median of rounds, min-max) | median step | forward | backward | clip | optimizer |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (precision, layer), results in variants.items():
        name = "every real token" if layer == "all" else "first tokens (ftlaunch)"
        lines.append(f"| {precision} | {name} | {timing_cells(results)} |")
    payload = {"rounds": rounds, "steps": steps, "runs": {f"{p} {layer}": v for (p, layer), v in variants.items()}}
    write_result("step_parts_last_layer", payload, "\n".join(lines))


def rows_study(rounds: int, steps: int) -> None:
    """fp32 packed steps with the kept word-embedding gradient: its row record (as shipped) vs whole-table
    zeroing, norm and scaling (the record dropped after each backward, as before it existed)."""
    variants = interleaved(rounds, {table: {"precision": "fp32", "kept": True, "steps": steps, "table": table}
                                    for table in ("whole", "rows")})  # fmt: skip
    lines = ["| word-embedding gradient | mean step ms (median of rounds, min-max) | median step | forward | backward | clip | optimizer |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for table, results in variants.items():
        name = "rows on record (ftlaunch)" if table == "rows" else "whole table"
        lines.append(f"| {name} | {timing_cells(results)} |")
    write_result("step_parts_rows", {"rounds": rounds, "steps": steps, "runs": variants}, "\n".join(lines))


# What each op of the step is, for the --ops table (self time, so nothing is counted twice).
OP_CLASSES = (
    ("linear GEMMs", ("aten::mm", "aten::addmm")),
    ("attention GEMMs", ("aten::bmm",)),
    ("AdamW", ("aten::_fused_adamw_",)),
    ("dropout (masks, scaling)", ("_Dropout", "_DropoutBackward", "aten::where", "aten::native_dropout_backward")),
    ("clipping norms", ("aten::linalg_vector_norm",)),
)

GEMM_SIZES = """
import json, sys, time, torch
rates = {}
for shape in json.loads(sys.argv[1]):
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = float("inf")
    for _ in range(6):  # the best of 6 blocks of 20: the rate the machine gives when nothing interferes
        started = time.perf_counter()
        for _ in range(20):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / 20)
    rates["x".join(map(str, shape))] = round(2 * m * k * n / best / 1e9, 1)
print(json.dumps(rates))
"""


def gemm_shape(op: dict) -> tuple[int, int, int] | None:
    """(m, k, n) of a 2-D matrix product from its recorded input shapes."""
    shapes = op["shapes"][1:3] if op["name"] == "aten::addmm" else op["shapes"][0:2]
    if len(shapes) != 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
        return None
    (m, k), (_, n) = shapes
    return m, k, n


def ops_study(steps: int) -> None:
    """The shipped fp32 step under torch's profiler: where its time goes by op class, and the linear layers'
    matrix products per shape (T = the batch's real tokens) against the same shapes run alone."""
    result = json.loads(run("fp32", True, steps, ops=True).stdout.strip().splitlines()[-1])
    ops = result.pop("ops")
    total = sum(op["self_us"] for op in ops)
    classes = {name: sum(op["self_us"] for op in ops if op["name"] in members) for name, members in OP_CLASSES}
    classes["everything else"] = total - sum(classes.values())
    lines = ["| op class | ms per step (profiled) | share |", "|---|---|---|"]
    lines += [f"| {name} | {us / steps / 1000:.1f} | {100 * us / total:.1f}% |" for name, us in classes.items()]
    members = {m for _, names in OP_CLASSES for m in names}
    rest = collections.Counter()
    for op in ops:
        if op["name"] not in members:
            rest[op["name"]] += op["self_us"]
    largest = rest.most_common(8)
    lines.append("| of which the largest | " + ", ".join(f"{name} {us / steps / 1000:.1f}" for name, us in largest) + " | |")
    # Shapes by the role of their dimensions: T (tokens, varies by batch) or a model width.
    by_role: dict[str, list[float]] = {}  # role -> [flops, us]
    tokens = []
    for op in ops:
        shape = gemm_shape(op) if op["name"] in dict(OP_CLASSES)["linear GEMMs"] else None
        if shape is None or min(shape) < 64:  # the classifier's and first-token products: tiny
            continue
        role = " x ".join("T" if d not in (384, 1536) else str(d) for d in shape)
        tokens += [d for d in shape if d not in (384, 1536)]
        totals = by_role.setdefault(role, [0.0, 0.0])
        totals[0] += 2 * shape[0] * shape[1] * shape[2] * op["calls"]
        totals[1] += op["self_us"]
    typical = int(statistics.median(tokens))
    alone_shapes = [[typical if part == "T" else int(part) for part in role.split(" x ")] for role in by_role]
    alone = json.loads(subprocess.run([sys.executable, "-c", GEMM_SIZES, json.dumps(alone_shapes)], capture_output=True,
                                      text=True, check=True).stdout)  # fmt: skip
    lines += ["", f"| linear GEMM (m x k x n) | GFLOP/s in the step | alone, T = {typical} |", "|---|---|---|"]
    for (role, (flops, us)), shape in zip(by_role.items(), alone_shapes):
        lines.append(f"| {role} | {flops / us / 1e3:.0f} | {alone['x'.join(map(str, shape))]:.0f} |")
    result.update(classes_us=classes, gemm_roles={r: {"flops": f, "us": u} for r, (f, u) in by_role.items()}, alone=alone)
    write_result("step_parts_ops", {"steps": steps, **result}, "\n".join(lines))


def gemm_ms_per_step(precision: str, steps: int) -> float:
    """oneDNN's own timing of every matmul it ran, per step (warm-up steps included, so a slight overestimate)."""
    out = run(precision, True, steps, {"ONEDNN_VERBOSE": "all"}).stdout.splitlines()
    gemm = (",exec,cpu,matmul,", ",exec,cpu,inner_product,")  # bf16 autocast's matmuls; fp32 oneDNN linear layers
    total = sum(float(line.rsplit(",", 1)[1]) for line in out if line.startswith("onednn_verbose") and any(k in line for k in gemm))
    return round(total / (steps + 5), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--last-layer", action="store_true", help="the packed last layer: every token vs first tokens")
    parser.add_argument("--rows", action="store_true", help="the kept embedding gradient: rows on record vs whole table")
    parser.add_argument("--ops", action="store_true", help="the shipped fp32 step under torch's profiler, by op class")
    args = parser.parse_args()
    if args.ops:
        return ops_study(args.steps)
    if args.last_layer:
        return last_layer_study(args.rounds, args.steps)
    if args.rows:
        return rows_study(args.rounds, args.steps)
    variants = interleaved(args.rounds, {(p, kept): {"precision": p, "kept": kept, "steps": args.steps}
                                         for p in ("fp32", "bf16") for kept in (False, True)})  # fmt: skip
    gemms = {precision: gemm_ms_per_step(precision, args.steps) for precision in ("fp32", "bf16")}
    print("oneDNN matmul ms/step", gemms, flush=True)
    lines = ["| precision | word-embedding gradient | mean step ms (median of rounds, min-max) | median step | forward | backward | clip | optimizer | oneDNN matmuls |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (precision, kept), results in variants.items():
        lines.append(f"| {precision} | {'kept buffer' if kept else 'fresh each step'} | {timing_cells(results)} "
                     f"| {gemms[precision] if kept else ''} |")  # fmt: skip
    payload = {"rounds": args.rounds, "steps": args.steps, "runs": {f"{p} {'kept' if k else 'plain'}": v for (p, k), v in variants.items()},
               "onednn_matmul_ms_per_step": gemms}  # fmt: skip
    write_result("step_parts", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
