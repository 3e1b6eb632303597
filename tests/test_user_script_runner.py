"""launcher.train.user_script: a user's script runs as `python SCRIPT ARGS` would run it, and a finished
one ends without Python's teardown, having done first what that teardown does for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ftl_support import REPO

SHOWS_ITSELF = """
import json, sys
print(json.dumps({"name": __name__, "argv": sys.argv, "path0": sys.path[0], "file": __file__}))
"""

WINDS_DOWN = """
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
log = open(out / "unclosed.txt", "w")  # never closed: its buffer is flushed when the object goes
log.write("buffered line\\n")
def late():
    time.sleep(0.5)
    (out / "thread.txt").write_text("joined")
threading.Thread(target=late).start()  # not a daemon: Python waits for it
atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
if len(sys.argv) > 2:
    sys.exit(int(sys.argv[2]))
"""


def run(script: Path, *args: str, env: dict | None = None, runner: bool = True) -> subprocess.CompletedProcess:
    prefix = ["-m", "launcher.train.user_script"] if runner else []
    return subprocess.run([sys.executable, *prefix, str(script), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, **(env or {})))  # fmt: skip


def test_the_script_sees_what_python_script_args_gives_it(tmp_path):
    script = tmp_path / "job" / "train.py"
    script.parent.mkdir()
    script.write_text(SHOWS_ITSELF)
    through_runner, plain = run(script, "--lr", "3e-5"), run(script, "--lr", "3e-5", runner=False)
    assert through_runner.returncode == plain.returncode == 0, through_runner.stderr
    assert through_runner.stdout == plain.stdout
    assert '"name": "__main__"' in plain.stdout and f'"path0": "{script.parent}"' in plain.stdout


@pytest.mark.parametrize("exit_code", [None, 0])
def test_a_finished_script_gets_its_threads_joined_atexit_run_and_files_flushed(tmp_path, exit_code):
    script = tmp_path / "train.py"
    script.write_text(WINDS_DOWN)
    result = run(script, str(tmp_path), *([] if exit_code is None else [str(exit_code)]))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "thread.txt").read_text() == "joined"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "unclosed.txt").read_text() == "buffered line\n"


def test_a_failing_script_keeps_its_exit_code_and_traceback(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(WINDS_DOWN)
    assert run(script, str(tmp_path), "3").returncode == 3
    assert (tmp_path / "atexit.txt").read_text() == "ran"  # Python's own path: atexit runs there too
    script.write_text("raise ValueError('bad batch')\n")
    result = run(script)
    assert result.returncode == 1 and "ValueError: bad batch" in result.stderr.splitlines()[-1]


def test_a_finished_script_ends_well_with_a_thread_still_in_torch(tmp_path):
    """The straggle fault at rank.exit: as gloo's workers after the last collective. Plain Python would
    abort here (tests/test_faults.py); the runner ends the script with exit 0."""
    script = tmp_path / "train.py"
    script.write_text(SHOWS_ITSELF)
    env = {"FTL_FAULT": "rank.exit:straggle", "FTL_FAULT_DIR": str(tmp_path), "RANK": "0"}
    result = run(script, env=env)
    assert (tmp_path / "rank.exit@0.reached").exists()
    assert result.returncode == 0 and result.returncode != -signal.SIGABRT, result.stderr
    assert "terminate called" not in result.stderr and '"name": "__main__"' in result.stdout
