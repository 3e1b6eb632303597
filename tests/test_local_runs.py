"""End to end through the real CLI: `ftlaunch submit --local` starts real node agents, real
`accelerate launch`, real gloo process groups; real MRPC rows; the real MiniLM checkpoint where
the test is about learning, a tiny random BERT where it is about distribution."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftl_support import HOST_PRECISION, MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir, read_records

from launcher.train.cpu_dropout import ATTENTION_NAME

pytestmark = pytest.mark.e2e


def submit_local(tmp_path: Path, model_dir: Path, mrpc_dir: Path, *flags: str, **fields) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "runs"
    result = ftlaunch("submit", MRPC_RECIPE, "--local", *flags, *local_mrpc_overrides(model_dir, mrpc_dir, out, **fields))
    return result, only_run_dir(out)


def final_eval(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["final_eval"]


# ---------------------------------------------------------------- learning, on the real checkpoint

def test_minilm_fine_tunes_on_real_mrpc_and_saves_a_loadable_model(tmp_path, minilm_dir, mrpc_dir):
    result, run_dir = submit_local(
        tmp_path, minilm_dir, mrpc_dir,
        **{"data.max_train_samples": 320, "data.max_eval_samples": 408, "train.max_steps": 40,
           "train.per_device_batch_size": 8, "train.logging_steps": 5},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the 45 MiB word-embedding gradient is written into one buffer for the run (launcher.train.embedding_grad)
    assert [r["kept_gradients"] for r in read_records(run_dir, "setup")] == [["bert.embeddings.word_embeddings"]]

    losses = [r["loss"] for r in read_records(run_dir, "train")]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"loss did not go down: {losses}"
    metrics = final_eval(run_dir)["metrics"]
    assert {"validation_accuracy", "validation_f1", "validation_loss"} <= set(metrics)
    assert final_eval(run_dir)["rows"] == 408

    # The saved directory is a plain Hugging Face model that reproduces the reported metric.
    model_dir = run_dir / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    reproduced = evaluate_saved_model(model_dir, mrpc_dir / "validation.jsonl")
    assert reproduced["accuracy"] == pytest.approx(metrics["validation_accuracy"], abs=1 / 408 + 1e-9)
    assert reproduced["f1"] == pytest.approx(metrics["validation_f1"], abs=0.01)
    assert (run_dir / "tensorboard").is_dir() and any((run_dir / "tensorboard").iterdir())


def evaluate_saved_model(model_dir: Path, validation: Path) -> dict:
    """Independent of ftlaunch's own evaluation: plain transformers, one row at a time (no padding)."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in validation.read_text().splitlines()]
    preds, labels = [], []
    with torch.no_grad():
        for row in rows:
            enc = tokenizer(row["sentence1"], row["sentence2"], truncation=True, max_length=128, return_tensors="pt")
            preds.append(int(model(**enc).logits.argmax(-1)))
            labels.append(row["label"])
    return {"accuracy": accuracy_score(labels, preds), "f1": f1_score(labels, preds)}


# ---------------------------------------------------------------- distribution, on a tiny model

@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory, tiny_model_dir, mrpc_dir):
    tmp = tmp_path_factory.mktemp("2x1")
    result, run_dir = submit_local(tmp, tiny_model_dir, mrpc_dir, "--nodes", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_two_local_nodes_train_synchronised_ranks(two_node_run):
    setups = read_records(two_node_run, "setup")
    assert sorted((r["rank"], r["node"]) for r in setups) == [(0, 0), (1, 1)]
    assert {r["world_size"] for r in setups} == {2}
    # fp32 on CPU: oneDNN's linear kernels where MKL leaves AVX-512 idle (not Intel), freed memory kept for reuse
    assert {(r["cpu_linear"], r["kept_freed_memory"]) for r in setups} == {(expected_cpu_linear(), True)}
    # dropout masks drawn by numpy, attention probabilities included (launcher.train.cpu_dropout)
    assert {(r["cpu_dropout"], r["attention"]) for r in setups} == {("numpy", ATTENTION_NAME)}
    # the encoder runs on each batch's real tokens (launcher.train.packing)
    assert {r["packed_sequences"] for r in setups} == {"on"}
    # the tiny model's 3.8 MiB embedding gradient is reused by glibc's heap without help
    assert [r["kept_gradients"] for r in setups] == [[], []]
    train = read_records(two_node_run, "train")
    by_step: dict[int, dict[int, float]] = {}
    for record in train:
        by_step.setdefault(record["step"], {})[record["rank"]] = record["param_checksum"]
    assert sorted(by_step) == [1, 2, 3, 4]
    for step, per_rank in by_step.items():
        assert per_rank[0] == per_rank[1], f"ranks differ after step {step}: {per_rank}"
    assert len({per_rank[0] for per_rank in by_step.values()}) == 4, "parameters should change every step"
    for node in (0, 1):
        assert (two_node_run / "logs" / f"node-{node}.log").stat().st_size > 0


def test_every_eval_row_is_counted_once_at_world_size_two(two_node_run):
    evals = read_records(two_node_run, "eval")
    assert {r["rank"] for r in evals} == {0, 1}
    assert {r["rows"] for r in evals} == {51}  # 51 rows on 2 ranks: no duplicate from the padded last batch


def test_one_node_two_processes_gives_the_same_result_as_two_nodes(tmp_path, tiny_model_dir, mrpc_dir, two_node_run):
    result, run_dir = submit_local(tmp_path, tiny_model_dir, mrpc_dir, "--nodes", "1", "--procs-per-node", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert final_eval(run_dir)["metrics"] == final_eval(two_node_run)["metrics"]
    checksums = lambda run: [(r["step"], r["rank"], r["param_checksum"]) for r in read_records(run, "train")]  # noqa: E731
    assert sorted(checksums(run_dir)) == sorted(checksums(two_node_run))


def test_torch_dropout_masks_on_request(tmp_path, tiny_model_dir, mrpc_dir, two_node_run):
    """train.cpu_dropout: torch keeps torch's Bernoulli kernel and SDPA: the same job trains as well, on
    other masks (so other parameters)."""
    result, run_dir = submit_local(tmp_path, tiny_model_dir, mrpc_dir, "--nodes", "2", **{"train.cpu_dropout": "torch"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {(r["cpu_dropout"], r["attention"]) for r in read_records(run_dir, "setup")} == {("torch", "sdpa")}
    last = lambda run: max(read_records(run, "train"), key=lambda r: r["step"])  # noqa: E731
    assert last(run_dir)["step"] == last(two_node_run)["step"]
    assert last(run_dir)["param_checksum"] != last(two_node_run)["param_checksum"]


def expected_cpu_linear() -> str:
    from launcher.train.cpu_kernels import choose_cpu_linear

    return choose_cpu_linear("auto", "cpu", "no", "ddp")


def test_onednn_and_mkl_linear_layers_train_to_the_same_model(tmp_path, tiny_model_dir, mrpc_dir, two_node_run):
    """Forced to the other kernels than two_node_run's, the same job ends at the same metrics and
    nearly the same parameters: only the order of fp32 sums differs."""
    other = "aten" if expected_cpu_linear() == "onednn" else "onednn"
    result, run_dir = submit_local(tmp_path, tiny_model_dir, mrpc_dir, "--nodes", "2", **{"train.cpu_linear": other})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {r["cpu_linear"] for r in read_records(run_dir, "setup")} == {other}
    ours, theirs = final_eval(run_dir)["metrics"], final_eval(two_node_run)["metrics"]
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-3), name
    checksums = lambda run: {(r["step"], r["rank"]): r["param_checksum"] for r in read_records(run, "train")}  # noqa: E731
    mine, reference = checksums(run_dir), checksums(two_node_run)
    assert mine.keys() == reference.keys()
    for key in mine:
        assert mine[key] == pytest.approx(reference[key], rel=1e-5), key


def test_gradient_accumulation_and_schedule_follow_the_plan_in_mixed_precision(tmp_path, tiny_model_dir, mrpc_dir):
    """bf16 where this CPU runs it natively, else fp32 (ftlaunch refuses emulated bf16 there)."""
    result, run_dir = submit_local(
        tmp_path, tiny_model_dir, mrpc_dir,
        **{"train.max_steps": "null", "train.epochs": 2, "train.gradient_accumulation_steps": 3,
           "train.precision": HOST_PRECISION, "train.warmup_steps": 2},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    # 64 rows / batch 4 = 16 micro-batches per epoch; ceil(16 / 3) = 6 optimizer steps; 2 epochs
    assert (plan["micro_batches_per_epoch"], plan["steps_per_epoch"], plan["total_steps"]) == (16, 6, 12)
    setup = read_records(run_dir, "setup")[0]
    assert setup["mixed_precision"] == HOST_PRECISION and setup["total_steps"] == plan["total_steps"]
    train = read_records(run_dir, "train")
    assert [r["step"] for r in train] == list(range(1, 13))
    lrs = [r["lr"] for r in train]
    assert lrs[0] == pytest.approx(5e-5 / 2)  # warmup step 1 of 2
    assert lrs[1] == pytest.approx(5e-5)
    assert lrs[-1] == pytest.approx(0.0)  # linear decay ends exactly at the planned last step
    assert [r["epoch"] for r in read_records(run_dir, "eval")] == [1.0, 2.0]


# ---------------------------------------------------------------- failures end the job, they never hang

def test_a_node_that_never_joins_fails_in_bounded_time(tmp_path, tiny_model_dir, mrpc_dir):
    out = tmp_path / "runs"
    dry = ftlaunch("submit", MRPC_RECIPE, "--local", "--nodes", "2", "--dry-run",
                   *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **{"distributed.join_timeout_s": 3}))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    run_dir = only_run_dir(out)
    started = time.monotonic()
    node0 = subprocess.run([sys.executable, "-m", "launcher.run.node", str(run_dir), "--machine-rank", "0"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert node0.returncode != 0
    assert time.monotonic() - started < 30
    assert "node 1 of 2 did not join within 3 s" in node0.stderr
    status = json.loads((run_dir / "status" / "node-0.json").read_text())
    assert status["state"] == "failed" and "node 1" in status["error"]


def test_a_killed_rank_ends_the_job_with_its_name(tmp_path, tiny_model_dir, mrpc_dir):
    out = tmp_path / "runs"
    args = local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **{"train.max_steps": 100000,
                                "data.max_train_samples": 3000, "distributed.timeout_s": 60})  # fmt: skip
    job = subprocess.Popen([sys.executable, "-m", "launcher", "submit", str(MRPC_RECIPE), "--local",
                            "--procs-per-node", "2", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=REPO)  # fmt: skip
    try:
        rank1 = wait_for_training_rank(out, rank=1, timeout=120)
        killed_at = time.monotonic()
        import os

        os.kill(rank1["pid"], signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 1
    assert time.monotonic() - killed_at < 60
    assert f"rank 1 (pid {rank1['pid']}" in stderr and "died without reporting an error" in stderr, stderr[-2000:]


def wait_for_training_rank(out: Path, rank: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [p for p in out.glob("*") if p.is_dir() and not p.name.startswith(".")] if out.exists() else []
        if runs and any(r["rank"] == rank for r in read_records(runs[0], "train")):
            return json.loads((runs[0] / "status" / f"rank-{rank}.json").read_text())
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started training")


def test_an_error_in_every_rank_is_reported_in_one_line(tmp_path, tiny_model_dir, mrpc_dir):
    result, _ = submit_local(tmp_path, tiny_model_dir, mrpc_dir, **{"data.text_fields": "[sentence1, question]"})
    assert result.returncode == 1
    assert "ftlaunch: job failed: node 0: rank 0 on" in result.stderr
    assert "no field(s) ['question']" in result.stderr


def test_padded_batches_on_request_train_the_same_model(tmp_path, tiny_model_dir, mrpc_dir, two_node_run):
    """train.packed_sequences: off runs the padded batches: the same steps over the same rows with the
    same dropout masks, so the same losses and parameters up to float summation order."""
    result, run_dir = submit_local(tmp_path, tiny_model_dir, mrpc_dir, "--nodes", "2", **{"train.packed_sequences": "off"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {r["packed_sequences"] for r in read_records(run_dir, "setup")} == {"off: train.packed_sequences: off"}
    by_step = lambda run: {(r["step"], r["rank"]): r for r in read_records(run, "train")}  # noqa: E731
    padded, packed = by_step(run_dir), by_step(two_node_run)
    assert sorted(padded) == sorted(packed)
    for key, record in padded.items():
        assert record["loss"] == pytest.approx(packed[key]["loss"], rel=1e-4, abs=1e-5), key
        assert record["param_checksum"] == pytest.approx(packed[key]["param_checksum"], rel=1e-6), key
    evals = lambda run: [(r["rows"], r["metrics"]["validation_accuracy"]) for r in read_records(run, "eval")]  # noqa: E731
    assert evals(run_dir) == evals(two_node_run)
