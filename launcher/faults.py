"""Named fault points, for the tests that break a run at exactly one place (the fault matrix).

    FTL_FAULT="checkpoint.staged@0:pause"     rank 0 stops at that point until released or signalled
    FTL_FAULT="train.step#3@1:kill"           rank 1 SIGKILLs itself right after optimizer step 3
    FTL_FAULT_DIR=/tmp/x                      where "reached" and "release" files go

A spec is POINT[#N][@RANK]:ACTION, several separated by commas. #N: at the point's N-th visit
(for train.step: after step N); @RANK: on that global rank only. Every action first writes
FTL_FAULT_DIR/POINT@RANK.reached (pid, time). Actions: pause (then wait for POINT@RANK.release or
any handled signal; a signal also writes POINT@RANK.woken, so a test releases later attempts only
once this one has its stop request), kill (SIGKILL this process), exit (os._exit(1)), raise (RuntimeError),
abort (os.abort(): SIGABRT, as a native library's std::terminate or assert would), straggle (start a
daemon thread that keeps calling into torch, as gloo's worker threads do while they release a finished
collective, and go on: a process that then ends through Python's teardown aborts).
Unset, a fault point costs one truthiness test.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "FTL_FAULT"
DIR_ENV = "FTL_FAULT_DIR"
ACTIONS = ("pause", "kill", "exit", "raise", "abort", "straggle")
PAUSE_LIMIT_S = 300


@dataclass(frozen=True)
class Fault:
    point: str
    action: str
    visit: int | None = None
    rank: int | None = None


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        where, _, action = item.rpartition(":")
        if action not in ACTIONS or not where:
            raise ValueError(f"{ENV}: {item!r}: expected POINT[#N][@RANK]:{'|'.join(ACTIONS)}")
        where, _, rank = where.partition("@")
        point, _, visit = where.partition("#")
        faults.append(Fault(point, action, int(visit) if visit else None, int(rank) if rank else None))
    return faults


_FAULTS = parse(os.environ.get(ENV, ""))
_visits: dict[str, int] = {}
_woken = False
_paused: Path | None = None  # the pause under way: its "woken" marker


def wake() -> None:
    """A signal handler of this process ran: a paused fault point goes on (the handler may also
    raise out of the pause, hence the marker is written here)."""
    global _woken
    _woken = True
    if _paused is not None:
        _paused.write_text(json.dumps({"pid": os.getpid(), "time": time.time()}))


def reach(point: str, visit: int | None = None) -> None:
    """Mark a fault point. `visit` numbers it (a step); default: how often it was reached."""
    if not _FAULTS:
        return
    count = _visits[point] = _visits.get(point, 0) + 1
    number = count if visit is None else visit
    rank = int(os.environ.get("RANK", "0"))
    for fault in _FAULTS:
        if fault.point == point and fault.visit in (None, number) and fault.rank in (None, rank):
            _act(fault, rank)


def _act(fault: Fault, rank: int) -> None:
    folder = Path(os.environ.get(DIR_ENV) or ".")
    name = f"{fault.point}@{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.reached").write_text(json.dumps({"pid": os.getpid(), "rank": rank, "time": time.time()}))
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.action == "exit":
        os._exit(1)
    if fault.action == "abort":
        os.abort()
    if fault.action == "raise":
        raise RuntimeError(f"fault injected at {fault.point}")
    if fault.action == "straggle":
        _straggle()
        return
    global _paused
    deadline = time.monotonic() + PAUSE_LIMIT_S
    _paused = folder / f"{name}.woken"
    try:
        while not _woken and not (folder / f"{name}.release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _paused = None


def _straggle() -> None:
    """A thread that is inside torch (GIL released) nearly all the time: when the interpreter finalizes,
    it comes back for the GIL from a C++ frame and std::terminate ends the process."""
    import threading

    import torch

    matrix = torch.randn(300, 300)
    started = threading.Event()

    def work():
        started.set()
        while True:
            torch.mm(matrix, matrix)

    threading.Thread(target=work, name="ftl-straggler", daemon=True).start()
    started.wait()
