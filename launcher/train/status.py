"""This rank's status file (RUN/status/rank-R.json): running -> done | failed | stopped.

The node agent reads them when its ranks exit, to say which rank failed and why; a rank still
"running" after its process is gone died without reporting (killed, out of memory, segfault).
"""

from __future__ import annotations

import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from launcher import faults
from launcher.processes import process_start_time
from launcher.rundir.status import write_status
from launcher.train.identity import RankIdentity


class Stopped(SystemExit):
    """This rank was told to stop (SIGTERM): not the cause of a failure, a consequence."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by signal {self.signum}"


@contextmanager
def rank_status(run_dir: Path, who: RankIdentity):
    pid = os.getpid()
    base = {"rank": who.rank, "node": who.node, "host": who.host, "pid": pid, "pid_started": process_start_time(pid),
            "attempt": who.attempt}  # fmt: skip
    write = lambda payload: write_status(run_dir, "rank", who.rank, payload)  # noqa: E731
    write({**base, "state": "running", "started": time.time()})
    try:
        yield
    except Stopped as exc:
        write({**base, "state": "stopped", "ended": time.time(), "error": str(exc)})
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        write(
            {
                **base,
                "state": "failed",
                "ended": time.time(),
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                "traceback": "".join(lines)[-4000:],
            },
        )
        raise
    faults.reach("rank.done")
    write({**base, "state": "done", "ended": time.time()})
