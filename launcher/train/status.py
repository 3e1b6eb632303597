"""Per-rank status files (run_dir/status/rank-N.json): running -> done | failed.

The node agent reads them when its ranks exit, to say which rank failed and why; a rank still
"running" after its process is gone died without reporting (killed, out of memory, segfault).
"""

from __future__ import annotations

import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from launcher.jsonfiles import write_json_atomic
from launcher.train.identity import RankIdentity


class Stopped(SystemExit):
    """This rank was told to stop (SIGTERM): not the cause of a failure, a consequence."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by signal {self.signum}"


def rank_status_path(run_dir: Path, rank: int) -> Path:
    return run_dir / "status" / f"rank-{rank}.json"


@contextmanager
def rank_status(run_dir: Path, who: RankIdentity):
    path = rank_status_path(run_dir, who.rank)
    base = {"rank": who.rank, "node": who.node, "host": who.host, "pid": os.getpid(), "attempt": who.attempt}
    write_json_atomic(path, {**base, "state": "running", "started": time.time()})
    try:
        yield
    except Stopped as exc:
        write_json_atomic(path, {**base, "state": "stopped", "ended": time.time(), "error": str(exc)})
        raise
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        write_json_atomic(
            path,
            {
                **base,
                "state": "failed",
                "ended": time.time(),
                "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                "traceback": "".join(lines)[-4000:],
            },
        )
        raise
    write_json_atomic(path, {**base, "state": "done", "ended": time.time()})
