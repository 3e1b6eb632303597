"""env.json: what a run was launched with, so it can be understood and reproduced later.

Secrets (tokens) are recorded only as "set": their values never reach a run directory.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata

from launcher.secrets import KNOWN_SECRETS, redact_argv

PACKAGES = (
    "ftlaunch", "torch", "accelerate", "transformers", "datasets", "deepspeed",
    "tokenizers", "huggingface-hub", "safetensors", "pydantic", "numpy",
)  # fmt: skip
RECORDED_ENV = (
    "CUDA_VISIBLE_DEVICES", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "NCCL_DEBUG", "SLURM_CLUSTER_NAME",
)  # fmt: skip


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(cwd: str) -> dict[str, str | bool] | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and a uid without a passwd entry (containers)
        return None


def env_record(argv: list[str]) -> dict:
    cwd = os.getcwd()
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "user": _user(),
        "cwd": cwd,
        "argv": redact_argv(argv),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": package_versions(),
        "git": git_state(cwd),
        "env": {name: os.environ[name] for name in RECORDED_ENV if name in os.environ},
        "secrets_passed_through": sorted(name for name in KNOWN_SECRETS if os.environ.get(name)),
    }


def render_env_record(argv: list[str]) -> str:
    return json.dumps(env_record(argv), indent=2) + "\n"
