"""bf16 only where it is real: on a CPU without native bf16 (no AVX512-BF16/AMX) it runs about 5x
slower than fp32, so a local run refuses it at plan time (from the CPU flags, no torch import) and
every rank refuses it at start (a Slurm CPU node's flags are only known there). The CPU is faked
through FTL_CPUINFO, a cpuinfo-format file: the edge where this host's real CPU is replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir

WITHOUT_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC (fake)\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
WITH_BF16 = WITHOUT_BF16.replace("avx512bw", "avx512bw avx512_bf16 amx_bf16")
MESSAGE = ("ftlaunch: error: train.precision: bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX) runs "
           "about 5x slower than fp32: use --set train.precision=no (fp32)")  # fmt: skip


def fake_cpu(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return {"FTL_CPUINFO": str(path)}


def test_bf16_is_refused_locally_on_a_cpu_without_it_and_leaves_nothing(tmp_path):
    out = tmp_path / "runs"
    args = ["submit", MRPC_RECIPE, "--local", "--dry-run", "--set", f"output_dir={out}"]  # the recipe says bf16
    refused = ftlaunch(*args, env=fake_cpu(tmp_path, WITHOUT_BF16))
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [MESSAGE]
    assert not out.exists() or not any(out.iterdir())
    fp32 = ftlaunch(*args, "--set", "train.precision=no", env=fake_cpu(tmp_path, WITHOUT_BF16))
    assert fp32.returncode == 0, fp32.stderr
    native = ftlaunch(*args, env=fake_cpu(tmp_path, WITH_BF16))
    assert native.returncode == 0, native.stderr


def test_slurm_cpu_nodes_are_checked_where_they_run(tmp_path):
    out = tmp_path / "runs"
    result = ftlaunch("submit", MRPC_RECIPE, "--dry-run", "--set", f"output_dir={out}", "--gpus-per-node", "0",
                      env=fake_cpu(tmp_path, WITHOUT_BF16))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "every rank checks that its CPU has native bf16" in result.stdout


@pytest.mark.e2e
def test_a_rank_on_a_cpu_without_bf16_refuses_in_one_line(tmp_path, tiny_model_dir, mrpc_dir):
    """The plan was made where bf16 is native; the node that runs it has no bf16."""
    out = tmp_path / "runs"
    dry = ftlaunch("submit", MRPC_RECIPE, "--local", "--dry-run",
                   *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **{"train.precision": "bf16"}),
                   env=fake_cpu(tmp_path, WITH_BF16))  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    run_dir = only_run_dir(out)
    node = subprocess.run([sys.executable, "-m", "launcher.run.node", str(run_dir), "--machine-rank", "0"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, **fake_cpu(tmp_path, WITHOUT_BF16)})  # fmt: skip
    assert node.returncode != 0
    status = json.loads((run_dir / "status" / "node-0.json").read_text())
    assert status["state"] == "failed"
    assert "SetupError: train.precision on " in status["error"] and "runs about 5x slower than fp32" in status["error"]
