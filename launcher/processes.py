"""Processes of a run on this host: who they are (pid + start time, so a recycled pid is never
mistaken for one of ours), the tree below a process, and how they are stopped.

Linux only (/proc, prctl), as the node agent is.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...): after "pid (comm) ", comm may hold spaces."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, it names one process,
    never a later one that happens to get the same pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of proc(5): starttime


def same_process(pid: int | None, started: int | None) -> bool:
    """True when `pid` still is the process that was recorded with start time `started`."""
    return bool(pid) and started is not None and process_start_time(int(pid)) == started


def parent_map() -> dict[int, int]:
    """pid -> parent pid, for every process visible here."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every process below `root` (children first, then theirs), whatever session or group they made.
    Processes that lost their parent are found here only if `root` adopted them (a subreaper)."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_map().items():
        children.setdefault(parent, []).append(pid)
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue += children.get(pid, [])
    return found


def children(parent: int, parents: dict[int, int] | None = None) -> list[int]:
    """`parents`: a parent_map() already read (one /proc scan costs ~4 ms of a core on these hosts)."""
    return [pid for pid, ppid in (parent_map() if parents is None else parents).items() if ppid == parent]


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == "Z"


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (e.g. a run dir), this process excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and not is_zombie(int(entry.name)):
            found.append(int(entry.name))
    return found


# prctl(2) options
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def adopt_orphans() -> bool:
    """Become a subreaper: a process below this one whose parent dies is re-parented here (not to
    init), so it can still be found by `descendants` and stopped."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(signum: int, expected_parent: int | None = None) -> None:
    """Ask the kernel for `signum` when this process's parent dies. If the parent is already gone
    (re-parented before the call), send it now. Also works from a Popen preexec_fn (before exec)."""
    _prctl(_PR_SET_PDEATHSIG, signum)
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), signum)


def reap_adopted(keep: int, parents: dict[int, int] | None = None) -> None:
    """Collect the exit status of adopted orphans that ended (zombies), never that of `keep`
    (whose status its Popen object will read)."""
    for pid in children(os.getpid(), parents):
        if pid != keep and is_zombie(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
