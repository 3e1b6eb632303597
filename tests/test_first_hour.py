"""What a newcomer meets in the first hour with the README, through the real CLI: messages that name
the right thing, dry runs kept apart, checks that run for every target, a baseline beside the metric."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides
from launcher.cli.main import main

README = (REPO / "README.md").read_text()


def fake_run(root: Path, name: str, target: str = "local", **plan) -> Path:
    run = root / name
    (run / "logs").mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps({"name": name, "target": target, "nodes": 1, **plan}))
    return run


def test_a_typo_in_a_set_key_is_blamed_on_the_set(capsys):
    assert main(["validate", str(MRPC_RECIPE), "--set", "trian.lr=3e-5"]) == 2
    assert capsys.readouterr().err.splitlines() == ["ftlaunch: error: --set trian: unknown key (did you mean 'train'?)"]


def test_ls_into_head_ends_quietly(tmp_path):
    for index in range(1500):  # more output than a pipe holds: ls is still writing when head exits
        fake_run(tmp_path / "runs", f"run-{index:04d}")
    result = subprocess.run(["bash", "-c", f"{sys.executable} -m launcher ls -n 0 --output-dir {tmp_path}/runs | head -3"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 3 and result.stderr == ""


def test_logs_without_a_run_shows_the_newest(tmp_path, capsys):
    older = fake_run(tmp_path / "runs", "older")
    (older / "logs" / "node-0.log").write_text("from the older run\n")
    newer = fake_run(tmp_path / "runs", "newer")
    (newer / "logs" / "node-0.log").write_text("from the newer run\n")
    os.utime(older / "plan.json", (1, 1))
    assert main(["logs", "--output-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "from the newer run" in out and "from the older run" not in out


def test_the_step_line_says_when_max_steps_ends_the_run_mid_epoch(tmp_path, mrpc_dir, tiny_model_dir, capsys,
                                                                   monkeypatch):  # fmt: skip
    monkeypatch.setenv("COLUMNS", "250")  # the plan table's cells on one line each
    args = local_mrpc_overrides(tiny_model_dir, mrpc_dir, tmp_path / "runs", **{
        "data.max_train_samples": "null", "train.max_steps": 60, "train.per_device_batch_size": 8})  # fmt: skip
    assert main(["submit", str(MRPC_RECIPE), "--local", "--dry-run", *map(str, args)]) == 0
    out = capsys.readouterr().out
    # 3,668 MRPC rows / batch 8 = 459 steps per epoch: 60 steps are 0.13 of an epoch
    assert "60 optimizer steps (train.max_steps) = 0.13 epoch(s) of 459" in out


def test_local_runs_check_their_model_dir_before_starting(tmp_path, mrpc_dir):
    out = tmp_path / "runs"
    args = local_mrpc_overrides(tmp_path / "no-such-model", mrpc_dir, out)
    result = ftlaunch("submit", MRPC_RECIPE, "--local", *args, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"ftlaunch: error: model.name_or_path: {tmp_path}/no-such-model does not exist"]
    assert not out.exists() or not any(out.iterdir())
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    result = ftlaunch("submit", MRPC_RECIPE, "--local", *local_mrpc_overrides(not_a_model, mrpc_dir, out), timeout=120)
    assert result.returncode == 2 and "is not a Hugging Face model directory (no config.json)" in result.stderr


def test_the_dry_run_reports_what_would_stop_a_real_submit(tmp_path, monkeypatch, capsys):
    """The README's first command: bert-base-uncased and glue/mrpc are not in this host's cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", "echo 1\n"), ("sinfo", "echo debug\n")):
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "runs"
    code = main(["submit", str(MRPC_RECIPE), "--dry-run", "--nodes", "2", "--gpus-per-node", "4", "--set", f"output_dir={out}"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "checks: 2 problem(s) would stop a real submit" in printed
    assert "model.name_or_path: bert-base-uncased is not in the local Hugging Face cache" in printed
    assert "data.dataset: glue (config mrpc) is not in the local datasets cache" in printed
    assert main(["submit", str(MRPC_RECIPE), "--nodes", "2", "--set", f"output_dir={out}"]) == 2  # the real one stops


def test_dry_runs_are_kept_apart_and_pruned(tmp_path, capsys):
    out = tmp_path / "runs"
    real = fake_run(out, "real-run-20260101-000000-abcdef")
    (real / "job.json").write_text(json.dumps({"target": "local"}))
    for _ in range(12):
        assert main(["submit", str(MRPC_RECIPE), "--dry-run", "--set", f"output_dir={out}", "--no-check"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: nothing launched; its run dir (kept apart from real runs" in printed
    dry = [p.name for p in out.iterdir() if "-dryrun-" in p.name]
    assert len(dry) == 10 and all(re.match(r"mrpc-bert-base-dryrun-\d{8}-\d{6}-[0-9a-f]{6}$", n) for n in dry)
    assert main(["ls", "--output-dir", str(out)]) == 0
    listed = capsys.readouterr().out
    assert "real-run" in listed and "dryrun" not in listed
    assert main(["ls", "--all", "--output-dir", str(out)]) == 0
    assert capsys.readouterr().out.count("dry run") == 10


def test_every_eval_names_the_majority_class_baseline():
    import torch

    from launcher.recipe.schema import Recipe
    from launcher.train.evaluation import class_baseline

    recipe = Recipe.model_validate({"name": "x", "model": {"name_or_path": "m"}, "metrics": ["accuracy", "f1"],
                                    "data": {"files": {"train": "t.jsonl", "validation": "v.jsonl"},
                                             "text_fields": ["sentence1", "sentence2"]}})  # fmt: skip
    labels = torch.tensor([1] * 279 + [0] * 129)  # MRPC's validation split
    found = class_baseline(recipe, torch.ones_like(labels), labels)
    assert found["baseline"]["majority_class"] == 1 and found["baseline"]["majority_rows"] == 279
    assert found["baseline"]["metrics"]["validation_accuracy"] == pytest.approx(279 / 408)
    assert found["baseline"]["metrics"]["validation_f1"] == pytest.approx(2 * 279 / (279 + 408))
    assert found["predicted_per_class"] == [0, 408]


def test_the_report_shows_the_baseline_and_warns_about_one_class(tmp_path):
    from launcher.collect import collect_run

    run = fake_run(tmp_path, "r", total_steps=2, world_size=1)
    (run / "metrics").mkdir()
    baseline = {"majority_class": 1, "majority_rows": 279, "metrics": {"validation_accuracy": 0.6838}}
    records = [
        {"type": "train", "step": 2, "loss": 0.6, "lr": 1e-5, "rank": 0, "node": 0, "time": 2.0, "step_seconds": 0.1,
         "samples_per_s": 80.0, "tokens_per_s": 4000.0},
        {"type": "eval", "step": 2, "rows": 408, "metrics": {"validation_accuracy": 0.6838}, "baseline": baseline,
         "predicted_per_class": [0, 408], "rank": 0, "node": 0, "time": 3.0},
    ]  # fmt: skip
    (run / "metrics" / "rank-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    collect_run(run)
    markdown = (run / "report.md").read_text()
    assert "| baseline | validation_accuracy 0.6838  (always class 1: 279 of 408 rows) |" in markdown
    assert "the final model predicts class 1 for every one of the 408 eval rows" in markdown


def test_the_readme_examples_are_fast_on_any_cpu_and_named_for_their_model():
    example = README[README.index("### Fine-tune on real MRPC here") :]
    example = example[example.index("```bash") : example.index("```", example.index("```bash") + 3)]
    assert "--set train.precision=no" in example and "train.precision=bf16" not in example
    assert "--set name=mrpc-minilm" in example
    assert "--index-url https://download.pytorch.org/whl/cpu" in README


def test_a_run_stopped_before_its_first_step_still_gets_a_report(tmp_path):
    from launcher.collect import collect_run

    run = fake_run(tmp_path, "r", total_steps=24, world_size=2)
    (run / "metrics").mkdir()
    (run / "metrics" / "rank-0.jsonl").write_text(json.dumps({"type": "setup", "rank": 0, "world_size": 2}) + "\n")
    report = collect_run(run)
    assert report["curves"] is None and not (run / "curves.png").exists()
    assert "| throughput | - (no train records) |" in (run / "report.md").read_text()
