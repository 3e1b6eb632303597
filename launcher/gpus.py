"""This host's GPUs, NVIDIA or AMD (ROCm), found without importing torch (the dry run stays fast),
and the visibility variable that gives each local "node" of a --local run its own GPUs.

NVIDIA: one entry per GPU in /proc/driver/nvidia/gpus; CUDA_VISIBLE_DEVICES narrows them.
AMD: the KFD topology nodes with SIMDs (CPU nodes have none); ROCR_VISIBLE_DEVICES narrows them
first, then HIP_VISIBLE_DEVICES (or CUDA_VISIBLE_DEVICES, which HIP reads the same way) indexes
what is left. FTL_SYSROOT names another root to read /proc and /sys under (fake GPUs for the tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSROOT_ENV = "FTL_SYSROOT"
NVIDIA_GPUS = "proc/driver/nvidia/gpus"
KFD_NODES = "sys/class/kfd/kfd/topology/nodes"
# The variables each vendor's runtime reads, innermost first: the first one set decides what a process sees.
VISIBILITY = {
    "nvidia": ("CUDA_VISIBLE_DEVICES",),
    "amd": ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
}
DEFAULT_VARIABLE = {"nvidia": "CUDA_VISIBLE_DEVICES", "amd": "ROCR_VISIBLE_DEVICES"}  # AMD's advice on Linux


def _root() -> Path:
    return Path(os.environ.get(SYSROOT_ENV) or "/")


def nvidia_gpus(root: Path | None = None) -> int:
    gpus = (root or _root()) / NVIDIA_GPUS
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def amd_gpus(root: Path | None = None) -> int:
    """KFD topology nodes with a non-zero simd_count: GPUs (a CPU node has 0)."""
    count = 0
    for properties in sorted(((root or _root()) / KFD_NODES).glob("*/properties")):
        try:
            fields = dict(line.split(None, 1) for line in properties.read_text().splitlines() if " " in line)
        except OSError:
            continue
        count += int(fields.get("simd_count", "0").strip() or 0) > 0
    return count


def vendor(root: Path | None = None) -> str | None:
    if nvidia_gpus(root):
        return "nvidia"
    return "amd" if amd_gpus(root) else None


def _listed(value: str) -> list[str]:
    return [d.strip() for d in value.split(",") if d.strip() and d.strip() != "-1"]


def visible_variable(environ: Mapping[str, str], gpu_vendor: str | None) -> str | None:
    """The variable that decides what a process sees here (None: all of the host's GPUs)."""
    return next((name for name in VISIBILITY[gpu_vendor or "nvidia"] if name in environ), None)


def local_gpu_count(environ: Mapping[str, str] | None = None, root: Path | None = None) -> int:
    environ = os.environ if environ is None else environ
    gpu_vendor = vendor(root)
    variable = visible_variable(environ, gpu_vendor)
    if variable is not None:
        return len(_listed(environ[variable]))
    return nvidia_gpus(root) if gpu_vendor == "nvidia" else amd_gpus(root)


def node_share(environ: Mapping[str, str], machine_rank: int, per_node: int, root: Path | None = None) -> dict[str, str]:
    """For `--local` with several "nodes" on this host: the variable (and value) that gives local node
    `machine_rank` its own `per_node` GPUs, the next ones after the nodes before it."""
    gpu_vendor = vendor(root) or "nvidia"
    variable = visible_variable(environ, gpu_vendor)
    if variable is not None:
        devices = _listed(environ[variable])
    else:
        variable = DEFAULT_VARIABLE[gpu_vendor]
        devices = [str(i) for i in range(local_gpu_count(environ, root))]
    return {variable: ",".join(devices[machine_rank * per_node : (machine_rank + 1) * per_node])}
