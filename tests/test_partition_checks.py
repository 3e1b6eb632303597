"""Checked before sbatch, without a cluster: sinfo's answer parsed (real Slurm 22.05 output shapes),
each check's exact line through the real CLI with a stub `sinfo` on PATH, one query per submit,
--cpus-per-task taken from the same answer, and a dry run without Slurm saying what it did not check.
tests/test_slurm_gpu.py runs the same checks against the real dev cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE
from launcher.cli.main import main
from launcher.submit.slurm import memory_mb, parse_partitions, time_seconds

# What `sinfo -h -o "%P|%a|%l|%D|%c|%m|%G|%s"` prints for a cluster with a default CPU partition, an
# A100 partition (sockets in the GRES, jobs of at most 2 nodes) and a short V100 partition.
SINFO = """debug*|up|1:00:00|2|8|32000|(null)|1-infinite
gpu|up|2-00:00:00|4|64|512000|gpu:a100:8(S:0-1)|1-2
short|up|30:00|1|16|64000|gpu:v100:2|1-infinite
"""


def test_sinfo_answer_parsed():
    debug, gpu, short = parse_partitions(SINFO)
    assert (debug.name, debug.default, debug.max_gpus, debug.max_time_s, debug.max_job_nodes) == ("debug", True, 0, 3600, None)
    assert (gpu.nodes, gpu.max_gpus, gpu.groups[0].gpu_type, gpu.groups[0].cpus, gpu.max_job_nodes) == (4, 8, "a100", 64, 2)
    assert [p.describe() for p in (debug, gpu, short)] == ["debug (no GPUs, default)", "gpu (8x a100)", "short (2x v100)"]
    # one partition, two kinds of node: sinfo prints a line for each; "N+" where a group's nodes differ
    (mixed,) = parse_partitions("mixed|up|infinite|2|32+|256000|gpu:v100:4|1-infinite\n"
                                "mixed|up|infinite|3|64|512000|gpu:a100:8,nvme:1|1-infinite\n")  # fmt: skip
    assert (mixed.nodes, mixed.max_gpus, mixed.gpu_text(), mixed.max_time_s) == (5, 8, "4x v100, 8x a100", None)
    assert [g.count for g in mixed.fitting(gpus=6)] == [3]
    assert parse_partitions("debug\n") is None  # not the asked-for format: nothing is checked against it


@pytest.mark.parametrize("text, seconds", [("90", 5400), ("30:00", 1800), ("4:00:00", 14400), ("2-12", 216000),
                                           ("1-12:00:00", 129600), ("infinite", None), ("UNLIMITED", None)])  # fmt: skip
def test_slurm_times(text, seconds):
    assert time_seconds(text) == seconds


def test_slurm_memory():
    assert [memory_mb(t) for t in ("64G", "500M", "64000", "1T", "0", "lots")] == [65536, 500, 64000, 1048576, None, None]


def stub_slurm(tmp_path: Path, monkeypatch, sinfo: str = SINFO) -> Path:
    """sinfo prints `sinfo` and counts its calls; sbatch records that it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "sinfo.txt").write_text(sinfo)
    scripts = {
        "sinfo": f'echo "$*" >> {tmp_path}/sinfo-calls\ncat {tmp_path}/sinfo.txt\n',
        "sbatch": f"echo called > {tmp_path}/sbatch-called; echo 77\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


def submit(capsys, out: Path, *sets: str, dry_run: bool = False) -> tuple[int, str, str]:
    args = ["submit", str(MRPC_RECIPE), "--no-check", "--set", f"output_dir={out}"]
    args += [word for s in sets for word in ("--set", s)] + (["--dry-run"] if dry_run else [])
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CHECKS = [  # (recipe settings, the one line the submit stops with)
    (["cluster.partition=nosuch"],
     "cluster.partition: no partition 'nosuch' on this cluster; use one of: debug (no GPUs, default), gpu (8x a100), "
     "short (2x v100)"),
    ([],  # the shipped recipe (1 GPU per node) on the default partition
     "cluster.gpus_per_node: partition debug has no GPUs; set cluster.gpus_per_node=0 or use one of: gpu (8x a100)"),
    (["cluster.partition=gpu", "cluster.gpus_per_node=16"],
     "cluster.gpus_per_node: 16 GPUs per node, but partition gpu has at most 8 (8x a100); set cluster.gpus_per_node=8 "
     "or less"),
    (["cluster.partition=short", "cluster.gpus_per_node=2"],
     "cluster.time: 01:00:00 is longer than the MaxTime of partition short (30:00); set cluster.time=30:00 or less, or "
     "use one of: gpu (8x a100)"),
    (["cluster.gpus_per_node=0", "cluster.nodes=3", "train.precision=no"],
     "cluster.nodes: 3 nodes, but partition debug has 2; set cluster.nodes=2 or less"),
    (["cluster.partition=gpu", "cluster.nodes=3"],
     "cluster.nodes: 3 nodes, but partition gpu takes at most 2 per job (MaxNodes); set cluster.nodes=2 or less"),
    (["cluster.partition=gpu", "cluster.cpus_per_task=128"],
     "cluster.cpus_per_task: 128 CPUs, but the nodes of partition gpu have at most 64; set cluster.cpus_per_task=64 or "
     "less, or leave it unset (then the job gets the node's cores)"),
    (["cluster.partition=gpu", "cluster.mem=1T"],
     "cluster.mem: 1T per node, but the nodes of partition gpu have at most 512000M; set cluster.mem=512000M or less"),
]  # fmt: skip


@pytest.mark.parametrize("sets, line", CHECKS)
def test_each_check_is_one_line_and_stops_before_sbatch(tmp_path, monkeypatch, capsys, sets, line):
    stub_slurm(tmp_path, monkeypatch)
    out = tmp_path / "runs"
    code, _, err = submit(capsys, out, *sets)
    assert (code, err.splitlines()) == (2, [f"ftlaunch: error: {line}"])
    assert not out.exists() and not (tmp_path / "sbatch-called").exists()
    # the dry run makes the same check and says that a real submit would stop there
    code, printed, _ = submit(capsys, out, *sets, dry_run=True)
    assert code == 0 and "checks: 1 problem(s) would stop a real submit" in printed and line in printed.replace("\n", "")


def test_a_job_that_fits_is_asked_for_with_the_partitions_cores(tmp_path, monkeypatch, capsys):
    stub_slurm(tmp_path, monkeypatch)
    out = tmp_path / "runs"
    code, printed, err = submit(capsys, out, "cluster.partition=gpu", "cluster.nodes=2", "cluster.gpus_per_node=4",
                                dry_run=True)  # fmt: skip
    assert (code, err) == (0, "") and "checks: passed" in printed
    (run_dir,) = out.iterdir()
    script = (run_dir / "sbatch.sh").read_text()
    # 4 of the node's 8 GPUs: half of its 64 cores, asked for by sbatch and by srun
    assert "#SBATCH --cpus-per-task=32" in script and "  --cpus-per-task=32 \\" in script
    assert "so it gets 32 of the node's 64 cores, the share of its 4 of 8 GPUs (partition gpu" in script.replace("\n# ", " ")
    assert (tmp_path / "sinfo-calls").read_text().splitlines() == ["-h -o %P|%a|%l|%D|%c|%m|%G|%s"]  # one query
    # cluster.cpus_per_task wins over the default
    code, printed, _ = submit(capsys, out, "cluster.partition=gpu", "cluster.cpus_per_task=12", dry_run=True)
    newest = max(out.iterdir(), key=lambda p: p.stat().st_mtime)
    assert "#SBATCH --cpus-per-task=12" in (newest / "sbatch.sh").read_text()


def test_a_sweep_asks_slurm_once(tmp_path, monkeypatch, capsys):
    stub_slurm(tmp_path, monkeypatch)
    out = tmp_path / "runs"
    args = ["submit", str(MRPC_RECIPE), "--no-check", "--dry-run", "--set", f"output_dir={out}", "--set",
            "cluster.partition=gpu", "--sweep", "train.lr=1e-5,2e-5,3e-5"]  # fmt: skip
    assert main(args) == 0
    assert "checks: passed" in capsys.readouterr().out
    assert len((tmp_path / "sinfo-calls").read_text().splitlines()) == 1
    (sweep_dir,) = out.iterdir()
    assert "#SBATCH --cpus-per-task=8" in (sweep_dir / "sbatch.sh").read_text()  # 1 of 8 GPUs: 8 of 64 cores


def test_a_dry_run_without_slurm_says_what_it_did_not_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(Path(os.__file__).parent))  # no Slurm commands on PATH
    out = tmp_path / "runs"
    code, printed, _ = submit(capsys, out, dry_run=True)
    flat = " ".join(printed.split())
    assert code == 0 and "sbatch not found on PATH" in flat
    assert ("not checked without an answer from Slurm: cluster.partition, its GPUs (GRES), cluster.time against its "
            "MaxTime, cluster.nodes, CPUs and memory per node") in flat  # fmt: skip
    (run_dir,) = out.iterdir()
    assert "--cpus-per-task" not in (run_dir / "sbatch.sh").read_text()  # nothing to take it from


def test_an_answer_in_another_format_is_not_checked_against(tmp_path, monkeypatch, capsys):
    stub_slurm(tmp_path, monkeypatch, sinfo="debug\n")  # e.g. a site's sinfo wrapper
    code, printed, _ = submit(capsys, tmp_path / "runs", dry_run=True)
    flat = " ".join(printed.split())
    assert code == 0 and "checks: passed" in flat
    assert "not checked against the cluster: cluster.partition" in flat and "(sinfo answered 'debug' to sinfo -h -o" in flat
