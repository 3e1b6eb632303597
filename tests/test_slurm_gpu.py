"""What a user meets on a GPU cluster, on the real dev cluster: partition debug (n1, n2) with fake
GPUs (gpu GRES: Slurm sets CUDA_VISIBLE_DEVICES, the ranks run on the CPU) and partition cpu (n3,
no GPUs, MaxTime 1 hour, MaxNodes 1). Every check made before sbatch, against real sinfo; a GPU job whose ranks
report what they saw; a CPU job given its node's cores; the shipped recipe accepted as it is."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE
from launcher.cli.main import main
from launcher.submit.slurm import job_states

pytestmark = pytest.mark.slurm

# One line each, as a real submit stops (nothing written, nothing sent to sbatch).
REAL_CHECKS = [
    (["cluster.partition=nosuch"],
     "cluster.partition: no partition 'nosuch' on this cluster; use one of: debug (2x gpu, default), cpu (no GPUs)"),
    (["cluster.partition=cpu", "cluster.time=10"],
     "cluster.gpus_per_node: partition cpu has no GPUs; set cluster.gpus_per_node=0 or use one of: debug (2x gpu, default)"),
    (["cluster.gpus_per_node=4"],
     "cluster.gpus_per_node: 4 GPUs per node, but partition debug has at most 2 (2x gpu); set cluster.gpus_per_node=2 or less"),
    (["cluster.partition=cpu", "cluster.gpus_per_node=0", "cluster.time=02:00:00"],
     "cluster.time: 02:00:00 is longer than the MaxTime of partition cpu (1:00:00); set cluster.time=1:00:00 or less, or "
     "use one of: debug (2x gpu, default)"),
    (["cluster.nodes=3"],
     "cluster.nodes: 3 nodes, but partition debug has 2 with 1 or more GPUs; set cluster.nodes=2 or less"),
    (["cluster.cpus_per_task=4"],
     "cluster.cpus_per_task: 4 CPUs, but the nodes of partition debug have at most 2; set cluster.cpus_per_task=2 or "
     "less, or leave it unset (then the job gets the node's cores)"),
    (["cluster.partition=cpu", "cluster.gpus_per_node=0", "cluster.time=30", "cluster.nodes=2"],
     "cluster.nodes: 2 nodes, but partition cpu takes at most 1 per job (MaxNodes); set cluster.nodes=1 or less, or use "
     "one of: debug (2x gpu, default)"),
    (["cluster.mem=16G"],
     "cluster.mem: 16G per node, but the nodes of partition debug have at most 8000M; set cluster.mem=8000M or less"),
]  # fmt: skip

ECHO_SHIM = r"""#!/bin/bash
echo "AGENT host=$(hostname) cpus=${SLURM_CPUS_PER_TASK:-} gpus=<${CUDA_VISIBLE_DEVICES:-}> nccl=<${NCCL_DEBUG:-}>"
"""
RANK_PROBE = r"""import json, os
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "SLURM_NODEID", "SLURMD_NODENAME", "SLURM_JOB_ID",
        "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS", "NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_SOCKET_IFNAME",
        "NCCL_IB_HCA"]
# one write per line: the ranks of a node share its log, and print() writes the newline apart
os.write(1, ("RANKENV " + json.dumps({k: os.environ.get(k) for k in keys}) + "\n").encode())
"""


def ftl(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def submitted(out: str) -> tuple[str, Path]:
    match = re.search(r"submitted Slurm job (\d+) \(.*\): (.+)$", out, re.M)
    assert match, out
    return match.group(1), Path(match.group(2).strip())


def wait_final(job_id: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = job_states([job_id]).states[job_id]
        if state.final:
            return state.state
        assert time.monotonic() < deadline, f"job {job_id}: still {state.describe()} after {timeout} s"
        time.sleep(0.3)


def test_every_check_against_the_real_cluster(slurm_cluster, tmp_path, capsys):
    out = tmp_path / "runs"
    for sets, line in REAL_CHECKS:
        args = [word for s in sets for word in ("--set", s)]
        code, _, err = ftl(capsys, "submit", str(MRPC_RECIPE), "--no-check", "--set", f"output_dir={out}", *args)
        assert (code, err.splitlines()) == (2, [f"ftlaunch: error: {line}"]), sets
    assert not out.exists()


def test_a_gpu_job_each_rank_sees_its_node_s_gpus_and_settings(slurm_cluster, tmp_path, capsys, monkeypatch):
    """2 nodes x 2 fake GPUs: the real node agent and accelerate launch start 2 ranks per node; each
    reports Slurm's CUDA_VISIBLE_DEVICES, its ranks, the task's CPUs, its threads and NCCL settings."""
    monkeypatch.delenv("FTL_PYTHON", raising=False)  # the real node agent
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")  # set in the submitting shell: kept in the script
    monkeypatch.delenv("NCCL_DEBUG", raising=False)
    probe = tmp_path / "probe.py"
    probe.write_text(RANK_PROBE)
    code, out, err = ftl(capsys, "submit", "--script", str(probe), "--nodes", "2", "--gpus-per-node", "2",
                         "--set", "cluster.time=10", "--set", f"output_dir={tmp_path / 'runs'}")  # fmt: skip
    assert code == 0, out + err
    job_id, run_dir = submitted(out)
    state = wait_final(job_id)
    logs = {p.name: p.read_text(errors="replace") for p in (run_dir / "logs").glob("*")}
    assert state == "COMPLETED", logs
    script = (run_dir / "sbatch.sh").read_text()
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --cpus-per-task=2" in script
    assert "so it gets the node's 2 cores (partition debug, as sinfo describes it)" in script.replace("\n# ", " ")
    seen = [json.loads(line.split("RANKENV ", 1)[1]) for text in logs.values() for line in text.splitlines()
            if "RANKENV " in line]  # fmt: skip
    assert sorted(int(r["RANK"]) for r in seen) == [0, 1, 2, 3], logs
    for rank in seen:
        node = int(rank["RANK"]) // 2
        assert (rank["SLURM_NODEID"], rank["SLURMD_NODENAME"], rank["LOCAL_RANK"]) == (
            str(node), f"n{node + 1}", str(int(rank["RANK"]) % 2)), rank  # fmt: skip
        assert rank["CUDA_VISIBLE_DEVICES"] == "0,1", rank  # both of its node's GPUs; rank i takes GPU i
        assert (rank["WORLD_SIZE"], rank["SLURM_JOB_ID"]) == ("4", job_id)
        assert (rank["SLURM_CPUS_PER_TASK"], rank["OMP_NUM_THREADS"]) == ("2", "1")  # 2 cores, 2 ranks
        assert (rank["NCCL_DEBUG"], rank["TORCH_NCCL_ASYNC_ERROR_HANDLING"], rank["NCCL_SOCKET_IFNAME"]) == (
            "WARN", "1", "eth0")  # fmt: skip


def test_a_cpu_job_on_the_partition_without_gpus(slurm_cluster, tmp_path, capsys, monkeypatch):
    shim = tmp_path / "agent.sh"
    shim.write_text(ECHO_SHIM)
    shim.chmod(0o755)
    monkeypatch.setenv("FTL_PYTHON", str(shim))
    code, out, err = ftl(capsys, "submit", str(MRPC_RECIPE), "--no-check", "--set", "cluster.partition=cpu",
                         "--set", "cluster.gpus_per_node=0", "--set", "cluster.time=30", "--set", "train.precision=no",
                         "--set", f"output_dir={tmp_path / 'runs'}")  # fmt: skip
    assert code == 0, out + err
    job_id, run_dir = submitted(out)
    assert wait_final(job_id) == "COMPLETED"
    log = (run_dir / "logs" / "node-0.log").read_text()
    assert "AGENT host=n3 cpus=2 gpus=<> nccl=<>" in log, log  # the node's cores; no GPU, no NCCL settings
    assert "--gpu-bind" not in (run_dir / "sbatch.sh").read_text()


def test_the_shipped_recipe_is_accepted_as_it_is(slurm_cluster, tmp_path, capsys, monkeypatch):
    """recipes/mrpc.yaml (1 GPU per node, no partition) on the default partition: checks pass, sbatch takes
    it (once: 'Invalid generic resource (gres) specification'), and it asks for its share of the cores."""
    shim = tmp_path / "agent.sh"
    shim.write_text(ECHO_SHIM)
    shim.chmod(0o755)
    monkeypatch.setenv("FTL_PYTHON", str(shim))
    code, out, err = ftl(capsys, "submit", str(MRPC_RECIPE), "--no-check", "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, out + err
    job_id, run_dir = submitted(out)
    assert wait_final(job_id) == "COMPLETED"
    script = (run_dir / "sbatch.sh").read_text()
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --cpus-per-task=1" in script  # 1 of 2 GPUs: 1 of 2 cores
    assert "AGENT host=n1 cpus=1 gpus=<0> nccl=<WARN>" in (run_dir / "logs" / "node-0.log").read_text()
