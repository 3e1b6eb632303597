"""Experiment trackers (`train.report_to`): which library each needs, whether it is installed, and
where a run goes when the user has not said (torch-free: the preflight and the dry run use it).

TensorBoard writes RUN/tensorboard. W&B runs in the project named after the recipe and keeps its
files under RUN/wandb (WANDB_MODE=offline: the whole run, for `wandb sync` later). MLflow logs to
MLFLOW_TRACKING_URI, or to MLflow's local file store RUN/mlruns where that is unset. Credentials
(WANDB_API_KEY, MLFLOW_TRACKING_TOKEN/PASSWORD) reach the ranks through the environment only.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

TRACKERS = ("tensorboard", "wandb", "mlflow")
LIBRARY = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # the module each imports
INSTALL_HINT = "pip install 'ftlaunch[trackers]'"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
WANDB_OFFLINE_MODES = ("offline", "disabled", "dryrun")


def missing_libraries(names: list[str]) -> list[str]:
    """The trackers in `names` whose library this interpreter cannot import (found without importing it)."""
    return [name for name in names if importlib.util.find_spec(LIBRARY[name]) is None]


def mlflow_defaults(run_dir: str | Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Where MLflow logs when the user has not said: the run dir's own file store. MLflow 3 keeps that
    store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set."""
    if environ.get("MLFLOW_TRACKING_URI"):
        return {}
    return {"MLFLOW_TRACKING_URI": f"file:{Path(run_dir) / MLFLOW_DIR}", "MLFLOW_ALLOW_FILE_STORE": "true"}


def wandb_can_log(environ: Mapping[str, str]) -> bool:
    """W&B runs offline, or has an API key: WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc."""
    if environ.get("WANDB_MODE", "").lower() in WANDB_OFFLINE_MODES or environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return bool(host and netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def tracker_problems(report_to: list[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """One line per tracker that would not log: its library is missing here, or W&B has no key."""
    problems = []
    for name in missing_libraries(report_to):
        problems.append(f"train.report_to: {name} is not installed for this Python ({INSTALL_HINT}, or pip install "
                        f"{name}); accelerate would silently leave it out")  # fmt: skip
    if "wandb" in report_to and not wandb_can_log(environ):
        problems.append("train.report_to: wandb has no API key here (WANDB_API_KEY is not set, no wandb login in "
                        "~/.netrc): export WANDB_API_KEY before submitting (it reaches the ranks through the "
                        "environment, never the run dir), or export WANDB_MODE=offline to keep the run in RUN/wandb")  # fmt: skip
    return problems
