"""The fault points the matrix breaks runs at: a paused point goes on when released or signalled,
and says which (the Slurm cells release later attempts only once the signal has arrived)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftl_support import REPO

PAUSED_RANK = """
import signal, sys
from launcher import faults
def handler(signum, frame):
    faults.wake()
    if sys.argv[1] == "raise":
        raise SystemExit(3)  # a handler outside the training loop stops the rank at once
signal.signal(signal.SIGTERM, handler)
faults.reach("demo.point")
print("went on", flush=True)
"""


def paused(tmp_path: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, FTL_FAULT="demo.point@0:pause", FTL_FAULT_DIR=str(tmp_path), RANK="0")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_RANK, mode], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "demo.point@0.reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the fault point was never reached"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("mode", ["return", "raise"])
def test_a_signal_ends_the_pause_and_leaves_a_woken_marker(tmp_path, mode):
    proc = paused(tmp_path, mode)
    time.sleep(0.2)
    assert proc.poll() is None, "the pause ended on its own"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == (0 if mode == "return" else 3)
    assert ("went on" in out) == (mode == "return")
    assert (tmp_path / "demo.point@0.woken").exists()


def test_a_release_ends_the_pause_without_a_woken_marker(tmp_path):
    proc = paused(tmp_path, "return")
    (tmp_path / "demo.point@0.release").touch()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "went on" in out
    assert not (tmp_path / "demo.point@0.woken").exists()


ENDING_RANK = """
import sys
from launcher import faults
from launcher.train.ending import end_process
faults.reach("rank.exit")
print("work done", flush=True)
if sys.argv[1] == "end_process":
    end_process(0)
"""


@pytest.mark.parametrize("ending", ["teardown", "end_process"])
def test_a_straggling_thread_aborts_pythons_teardown_and_not_end_process(tmp_path, ending):
    """The straggle fault does to a finished process what gloo's worker threads can do to a rank after
    its last collective (the fault matrix relies on it): Python's teardown aborts; end_process does not."""
    env = dict(os.environ, FTL_FAULT="rank.exit:straggle", FTL_FAULT_DIR=str(tmp_path), RANK="0")
    result = subprocess.run([sys.executable, "-c", ENDING_RANK, ending], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert "work done" in result.stdout and (tmp_path / "rank.exit@0.reached").exists()
    if ending == "teardown":
        assert result.returncode == -signal.SIGABRT and "terminate called" in result.stderr, result.stderr
    else:
        assert result.returncode == 0 and result.stderr == "", result.stderr
