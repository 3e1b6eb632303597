"""DeepSpeed ZeRO 1/2/3 for real, on CPU, through the real CLI: `ftlaunch submit --local` -> node
agent -> `accelerate launch` (DeepSpeed plugin, the run dir's deepspeed.json) -> 2 gloo ranks.

Every ZeRO run is compared with the DDP run of the same recipe (run once for this module): the same
data order, seed and initial weights, so the per-rank losses at every step and the final evaluation
must agree (the learning rate is high enough that a wrong gradient sync shows up at step 2).

Compile cost: the first DeepSpeed process group on a machine JIT-compiles a comm op (~37 s, cached in
~/.cache/torch_extensions); the `ds_ops` fixture builds it once, serially, before the first run
(tests/deepspeed_support.py). No optimizer extension is ever built (torch AdamW is the client optimizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepspeed_support import build_deepspeed_comm_op, job_samples_per_s, losses_by_rank_step
from ftl_support import CPU_BF16, MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir, read_records

pytestmark = pytest.mark.e2e

# 64 rows on 2 ranks, 4 per device, accumulation 2: 4 optimizer steps = 1 epoch. lr 3e-3 moves the
# tiny model enough per step that an unsynchronised rank shows in the next step's loss; clipping at
# 1.0 (the recipe default) is active, so DeepSpeed's gradient_clipping is compared with DDP's too.
FIELDS = {
    "train.max_steps": 4,
    "train.gradient_accumulation_steps": 2,
    "train.lr": 3e-3,
    "train.save_strategy": "no",
}
LOSS_TOLERANCE = 1e-4  # fp32; measured differences are below 1e-6
BF16_LOSS_TOLERANCE = 1e-2  # DeepSpeed bf16 runs the module in bf16; DDP here is fp32

RUNS = {  # name -> (CLI flags, extra fields)
    "ddp": ([], {}),
    "zero1": ([], {"distributed.backend": "deepspeed", "distributed.zero_stage": 1}),
    "zero2": ([], {"distributed.backend": "deepspeed", "distributed.zero_stage": 2}),
    # keeps its end-of-epoch checkpoint (step 4): ZeRO-3 shards for the consolidation/export test
    "zero3": ([], {"distributed.backend": "deepspeed", "distributed.zero_stage": 3, "train.save_strategy": "epoch"}),
    "zero3-2nodes-offload": (
        ["--nodes", "2", "--procs-per-node", "1"],
        {"distributed.backend": "deepspeed", "distributed.zero_stage": 3,
         "distributed.offload_optimizer": "true", "distributed.offload_params": "true"},
    ),
    "zero2-bf16-offload": (
        [],
        {"distributed.backend": "deepspeed", "distributed.zero_stage": 2, "distributed.offload_optimizer": "true",
         "train.precision": "bf16"},
    ),
}  # fmt: skip
MEASURED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def ds_ops() -> float:
    return build_deepspeed_comm_op()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, mrpc_dir, ds_ops):
    """name -> run dir; each run starts the first time a test asks for it, then is reused."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            flags, fields = RUNS[name]
            out = tmp_path_factory.mktemp(name) / "runs"
            procs = [] if "--procs-per-node" in flags else ["--procs-per-node", "2"]
            result = ftlaunch("submit", MRPC_RECIPE, "--local", *procs, *flags,
                              *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **{**FIELDS, **fields}))  # fmt: skip
            assert result.returncode == 0, f"{name}: " + result.stdout[-3000:] + result.stderr[-3000:]
            run_dir = only_run_dir(out)
            done[name] = run_dir
            train = read_records(run_dir, "train")
            results = json.loads((run_dir / "results.json").read_text())
            MEASURED[name] = {
                "final_loss": round(sum(r["loss"] for r in train if r["step"] == 4) / 2, 6),
                "samples_per_s": job_samples_per_s(train),
                "wall_s": results["wall_seconds"],
                "eval_loss": round(results["final_eval"]["metrics"]["validation_loss"], 6),
            }
        return done[name]

    yield get
    if MEASURED:
        print(f"\n[deepspeed] comm op build/load: {ds_ops} s")
        print("| run | final train loss (mean of ranks, step 4) | eval loss | samples/s (job) | wall s (per rank) |")
        print("|---|---|---|---|---|")
        for name, row in MEASURED.items():
            print(f"| {name} | {row['final_loss']} | {row['eval_loss']} | {row['samples_per_s']} | {row['wall_s']} |")


def _final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["final_eval"]


def _assert_same_training(run_dir: Path, reference: Path, tolerance: float) -> None:
    ours, theirs = losses_by_rank_step(read_records(run_dir, "train")), losses_by_rank_step(read_records(reference, "train"))
    assert sorted(ours) == sorted(theirs) == [(rank, step) for rank in (0, 1) for step in (1, 2, 3, 4)]
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=tolerance), f"(rank, step) {key}: {ours[key]} vs DDP {theirs[key]}"
    assert len({round(v, 3) for v in theirs.values()}) > 4, "the losses should move: the comparison would be vacuous"
    mine, ddp = _final_eval(run_dir), _final_eval(reference)
    assert mine["rows"] == ddp["rows"] == 51
    assert mine["metrics"]["validation_loss"] == pytest.approx(ddp["metrics"]["validation_loss"], abs=tolerance)
    assert mine["metrics"]["validation_accuracy"] == pytest.approx(ddp["metrics"]["validation_accuracy"], abs=1 / 51 + 1e-9)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains_exactly_like_ddp(runs, stage):
    run_dir = runs(f"zero{stage}")
    setups = read_records(run_dir, "setup")
    assert sorted(r["rank"] for r in setups) == [0, 1]
    assert {r["distributed_type"] for r in setups} == {"DistributedType.DEEPSPEED"}
    assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == stage
    _assert_same_training(run_dir, runs("ddp"), LOSS_TOLERANCE)


def test_zero3_final_model_loads_and_evaluates_as_the_run_reported(runs, mrpc_dir):
    """The ZeRO-3 shards are gathered at save time into a plain Hugging Face directory: it loads with
    AutoModelForSequenceClassification, has the same tensors (names included) as the DDP run's model,
    and scores exactly what the run reported."""
    import torch
    from safetensors.torch import load_file

    run_dir = runs("zero3")
    model_dir = run_dir / "model"
    saved, ddp_saved = load_file(model_dir / "model.safetensors"), load_file(runs("ddp") / "model" / "model.safetensors")
    assert sorted(saved) == sorted(ddp_saved)  # LayerNorm.weight/bias, not the legacy gamma/beta
    for name, tensor in ddp_saved.items():
        assert saved[name].dtype == torch.float32
        torch.testing.assert_close(saved[name], tensor, atol=1e-5, rtol=1e-4, msg=name)

    reported = _final_eval(run_dir)
    scored = evaluate_first_rows(model_dir, mrpc_dir / "validation.jsonl", rows=reported["rows"])
    assert scored["accuracy"] == pytest.approx(reported["metrics"]["validation_accuracy"], abs=1e-9)
    assert scored["loss"] == pytest.approx(reported["metrics"]["validation_loss"], abs=1e-4)


def evaluate_first_rows(model_dir: Path, validation: Path, rows: int) -> dict:
    """Independent of ftlaunch: plain transformers, one row at a time (no padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    assert next(model.parameters()).dtype == torch.float32
    data = [json.loads(line) for line in validation.read_text().splitlines()[:rows]]
    correct, losses = 0, []
    with torch.no_grad():
        for row in data:
            enc = tokenizer(row["sentence1"], row["sentence2"], truncation=True, max_length=128, return_tensors="pt")
            logits = model(**enc).logits
            correct += int(logits.argmax(-1)) == row["label"]
            losses.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor([row["label"]]))))
    return {"accuracy": correct / len(data), "loss": sum(losses) / len(losses)}


def test_zero3_checkpoint_shards_consolidate_to_the_final_model_and_export(runs, tmp_path):
    """The run's own checkpoint (accelerator.save_state: state/pytorch_model/zero_pp_rank_*) consolidated
    by launcher.collect.zero equals the final model the run saved, and `ftlaunch collect --export`
    (which goes through it) writes a from_pretrained directory with the same weights."""
    import torch
    from safetensors.torch import load_file

    from launcher.collect.zero import zero_state_dict

    run_dir = runs("zero3")
    [checkpoint] = sorted((run_dir / "checkpoints").glob("step-*"))
    assert checkpoint.name == "step-00000004"
    shards = sorted(p.name for p in (checkpoint / "state" / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2, shards
    final = load_file(run_dir / "model" / "model.safetensors")
    consolidated = zero_state_dict(checkpoint / "state")
    assert sorted(consolidated) == sorted(final)
    for name, tensor in final.items():
        assert torch.equal(consolidated[name], tensor), name

    export = tmp_path / "export"
    result = ftlaunch("collect", run_dir, "--no-write", "--export", export, "--from", "latest")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    exported = load_file(export / "model.safetensors")
    assert sorted(exported) == sorted(final)
    for name, tensor in final.items():
        assert torch.equal(exported[name], tensor), name


def test_zero3_on_two_local_nodes_with_full_offload_and_no_optimizer_build(runs):
    """2 "nodes" on this host (accelerate's `standard` multinode launcher = torchrun per node), ZeRO-3
    with optimizer and parameter offload: the torch AdamW stays the optimizer (no CPUAdam build)."""
    run_dir = runs("zero3-2nodes-offload")
    assert sorted((r["rank"], r["node"]) for r in read_records(run_dir, "setup")) == [(0, 0), (1, 1)]
    _assert_same_training(run_dir, runs("ddp"), LOSS_TOLERANCE)
    logs = "".join((run_dir / "logs" / f"node-{n}.log").read_text() for n in (0, 1))
    assert "cpu_adam" not in logs.lower() and "fused_adam" not in logs.lower()


@pytest.mark.skipif(not CPU_BF16, reason="this CPU has no native bf16 (ftlaunch refuses bf16 on it); the GPU path is the same")
def test_zero2_bf16_with_offload_trains_and_saves_fp32_master_weights(runs):
    import torch
    from safetensors.torch import load_file

    run_dir = runs("zero2-bf16-offload")
    assert {r["mixed_precision"] for r in read_records(run_dir, "setup")} == {"bf16"}
    _assert_same_training(run_dir, runs("ddp"), BF16_LOSS_TOLERANCE)
    saved = load_file(run_dir / "model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the fp32 masters, not the bf16 module
    assert json.loads((run_dir / "model" / "config.json").read_text())["dtype"] == "float32"


def test_a_hand_edited_deepspeed_json_is_refused_in_one_line(tmp_path, tiny_model_dir, mrpc_dir):
    """A run dir whose deepspeed.json no longer agrees with its plan fails on every rank before any
    process group starts, with one line naming the fields."""
    import subprocess
    import sys

    out = tmp_path / "runs"
    dry = ftlaunch("submit", MRPC_RECIPE, "--local", "--procs-per-node", "2", "--dry-run",
                   *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **{"distributed.backend": "deepspeed"}))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    run_dir = only_run_dir(out)
    path = run_dir / "deepspeed.json"
    config = json.loads(path.read_text())
    config["train_batch_size"] = 16  # plan: 4 per device x 1 x 2 ranks = 8
    path.write_text(json.dumps(config, indent=2))
    node = subprocess.run([sys.executable, "-m", "launcher.run.node", str(run_dir), "--machine-rank", "0"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert node.returncode != 0
    errors = [line for line in node.stderr.splitlines() if line.startswith("ftlaunch node 0: error:")]
    assert len(errors) == 1, node.stderr[-3000:]
    assert "SetupError: " in errors[0] and f"{path}: train_batch_size is 16 but the plan has 8" in errors[0]
    assert "train_batch_size 16 != train_micro_batch_size_per_gpu 4 x gradient_accumulation_steps 1 x world size 2 (= 8)" in errors[0]
