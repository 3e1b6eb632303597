"""Facts about the submitting host, found without importing torch (the dry run must stay fast)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from launcher.cpu import native_bf16
from launcher.plan import HostFacts


def local_gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def host_facts() -> HostFacts:
    return HostFacts(gpus=local_gpu_count(), python=sys.executable, cpu_bf16=native_bf16())
