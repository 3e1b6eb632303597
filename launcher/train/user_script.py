"""`python -m launcher.train.user_script SCRIPT [ARGS...]`: a user's own script (recipe `entrypoint`),
run as `python SCRIPT ARGS` runs it, and ended as ftlaunch's own ranks end (launcher.train.ending).

A script's ranks write no status, so a rank that aborted in Python's teardown after its work would
fail the job. On success this runner first does what the teardown would have done that a script
relies on: its other threads joined, its atexit handlers run (W&B's finish, logging's flush), its
objects released (unclosed files flush); then it ends at once. A failure (an exception, a non-zero
sys.exit) takes Python's usual path: its traceback and exit code are what the node agent explains.
"""

from __future__ import annotations

import atexit
import gc
import io
import runpy
import sys
import threading
from pathlib import Path

from launcher import faults
from launcher.train.ending import end_process


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m launcher.train.user_script SCRIPT [ARGS...]")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` (not the current dir)
    try:
        namespace = runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
        namespace = {}
    faults.reach("rank.exit")
    wind_down(namespace)
    end_process(0)


def wind_down(namespace: dict) -> None:
    """What Python's teardown does that a finished script may rely on, while threads may still take the GIL."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    flush_open_files()  # before any release: a file collected in a reference cycle can lose its buffer
    namespace.clear()
    gc.collect()  # the script's objects' finalizers run, as at teardown
    flush_open_files()


def flush_open_files() -> None:
    """Flush every file object still open, such as one the script never closed."""
    for obj in gc.get_objects():
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed and obj.writable():
                    obj.flush()
            except (OSError, ValueError):
                pass  # a stream that cannot flush now would not have at teardown either


if __name__ == "__main__":
    main()
