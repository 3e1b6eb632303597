"""A real Slurm cluster for the tests (slurm/dev/up.sh: slurmctld + slurmd n1/n2/n3 in network
namespaces, munge), session-scoped, and shellcheck for the sbatch tests. Partition debug (the
default: n1, n2) has FAKE_GPUS fake GPUs per node (gpu GRES: Slurm sets CUDA_VISIBLE_DEVICES, the
ranks run on the CPU); partition cpu (n3) has none, a MaxTime of one hour and MaxNodes 1. CPU jobs
run anywhere.

Needs root (apt-get, munged, ip netns): skipped with the reason otherwise; CI runs as root, so there
it really runs. The first start installs the Debian packages (~6 s); later ones take ~0.3 s. At the
end the cluster is stopped by the PIDs up.sh recorded (down.sh; then any survivor, checked by its
/proc/PID/comm, is killed by PID), unless it was already up before the session, in which case it
is left as it was found.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("FTL_SLURM_SCRIPTS", REPO / "slurm" / "dev"))
BASE = os.environ.get("FTL_SLURM_BASE", "/tmp/ftl-slurm")  # one cluster per machine (fixed ports, bridge)
FAKE_GPUS = int(os.environ.get("SLURM_LAB_GPUS", "2"))  # every session starts the same cluster


def _can_run_slurm() -> str | None:
    if os.geteuid() != 0:
        return "needs root (apt-get, munged, network namespaces)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "no apt-get and no slurmctld"
    if not (SLURM_DIR / "up.sh").is_file():
        return f"no {SLURM_DIR}/up.sh"
    return None


def _recorded_pids(base: str) -> list[tuple[str, int]]:
    pidfile = Path(base) / "run" / "cluster.pids"
    pids = []
    try:
        lines = pidfile.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        name, _, pid = line.partition(" ")
        if name not in ("net", "mode") and pid.strip().isdigit():
            pids.append((name, int(pid)))
    return pids


def _alive_as(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def stop_cluster(env: dict[str, str]) -> None:
    """down.sh (cancel jobs, stop daemons by recorded PID), then make sure by PID."""
    recorded = _recorded_pids(env["SLURM_LAB_BASE"])
    subprocess.run(["bash", str(SLURM_DIR / "down.sh")], env=env, capture_output=True, timeout=180)
    for name, pid in recorded:
        if _alive_as(pid, name):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm_cluster():
    why = _can_run_slurm()
    if why:
        pytest.skip(f"real Slurm unavailable: {why}")
    env = dict(os.environ, SLURM_LAB_BASE=BASE, SLURM_LAB_GPUS=str(FAKE_GPUS))
    started = time.monotonic()
    up = subprocess.run(["bash", str(SLURM_DIR / "up.sh")], env=env, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        stop_cluster(env)
        pytest.fail(f"slurm/dev/up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    ours = "already up" not in up.stderr
    conf = next(line.split("=", 1)[1] for line in up.stdout.splitlines() if line.startswith("export SLURM_CONF="))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # every sbatch/squeue/sacct/scancel the code under test runs finds it
    try:
        yield {
            "conf": conf,
            "base": BASE,
            "partition": "debug",
            "nodes": ["n1", "n2"],
            "gpus_per_node": FAKE_GPUS,  # in debug
            "cpu_partition": "cpu",  # n3: no GPUs, MaxTime 1:00:00, MaxNodes 1
            "cpu_nodes": ["n3"],
            "logs": Path(BASE) / "log",
            "up_s": time.monotonic() - started,
        }
    finally:
        if ours:
            stop_cluster(env)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@functools.lru_cache(maxsize=1)
def shellcheck_path() -> tuple[str | None, str]:
    """(path to shellcheck, why not): Debian's shellcheck, installed here if we are root."""
    found = shutil.which("shellcheck")
    if found:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, "shellcheck not installed and not root (apt-get install shellcheck)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends", "shellcheck"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        subprocess.run(
            ["apt-get", "-o", "DPkg::Lock::Timeout=120", "update"], env=env, capture_output=True, timeout=600
        )
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = shutil.which("shellcheck")
    if found:
        return found, ""
    return None, f"apt-get install shellcheck failed: {(result.stderr or result.stdout).strip()[-300:]}"
