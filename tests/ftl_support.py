"""Helpers for tests that run ftlaunch end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MRPC_RECIPE = REPO / "recipes" / "mrpc.yaml"

# Mixed precision for tests that exercise it on this host: bf16 only where the CPU runs it natively
# (elsewhere ftlaunch refuses it, as about 5x slower than fp32).
from launcher.cpu import native_bf16  # noqa: E402

CPU_BF16 = native_bf16() is not False
HOST_PRECISION = "bf16" if CPU_BF16 else "no"


def make_tiny_model(out: Path, tokenizer_source: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    import torch

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, num_labels=2,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def local_mrpc_overrides(model_dir: Path, mrpc_dir: Path, output_dir: Path, **fields) -> list[str]:
    """`--set` arguments pointing the shipped MRPC recipe at a local model and the real MRPC files."""
    values = {
        "model.name_or_path": model_dir,
        "data.dataset": "null",
        "data.config": "null",
        "data.files.train": mrpc_dir / "train.jsonl",
        "data.files.validation": mrpc_dir / "validation.jsonl",
        "data.max_train_samples": 64,
        "data.max_eval_samples": 51,
        "train.max_steps": 4,
        "train.logging_steps": 1,
        "train.per_device_batch_size": 4,
        "train.precision": "no",
        "output_dir": output_dir,
        **fields,
    }
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def ftlaunch(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "launcher", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO,
    )  # fmt: skip


def only_run_dir(output_dir: Path) -> Path:
    runs = [p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


def read_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    records = []
    for path in sorted((run_dir / "metrics").glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if kind is None or record["type"] == kind:
                records.append(record)
    return records


def assert_matches_golden(path: Path, text: str) -> None:
    """Byte-compare rendered text with its golden file; FTL_UPDATE_GOLDENS=1 rewrites the file first."""
    if os.environ.get("FTL_UPDATE_GOLDENS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
    assert path.is_file(), f"{path} missing: run FTL_UPDATE_GOLDENS=1 python -m pytest"
    assert text.encode("utf-8") == path.read_bytes(), f"{path} differs (FTL_UPDATE_GOLDENS=1 to accept)"
