"""The Hugging Face caches a job reads, and the switches that keep it off the network.

Compute nodes are assumed offline: the batch script exports OFFLINE_ENV and the cache paths
resolved on the submitting host, which is also where `submit` checks (as if offline) that the
model and dataset are there, and where `ftlaunch prefetch` downloads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def hf_cache_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """HF_HOME, HF_HUB_CACHE, HF_DATASETS_CACHE as huggingface_hub and datasets resolve them here;
    the sbatch script exports exactly these, so the job reads the cache that was checked."""
    env = os.environ if environ is None else environ

    def absolute(path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    cache_home = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = absolute(env.get("HF_HOME") or os.path.join(cache_home, "huggingface"))
    hub = absolute(env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub"))
    datasets = absolute(env.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets"))
    return {"HF_HOME": home, "HF_HUB_CACHE": hub, "HF_DATASETS_CACHE": datasets}
