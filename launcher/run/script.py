"""The node agent's side of a user's own script (recipe `entrypoint`).

A foreign script writes no rank status files, so what ftlaunch can say about a failure comes from
what the node saw: the launcher's exit code, torchrun's "Root Cause" summary (which rank, on which
host, exit code or signal) and the last lines the script printed. The agent keeps those lines by
copying the launcher's output through (to the node log, as before) and remembering the tail.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from launcher.plan import Plan
from launcher.run.failures import PEER_LOST

TAIL_LINES = 400  # remembered from the launcher's output
SHOWN_LINES = 12  # of the script's own output, in the failure report

# Where torchrun's (accelerate launch's) own report of a failed worker begins.
_LAUNCHER_REPORT = re.compile(
    r"failed \(exitcode: -?\d+\) local_rank|Sending process \d+ closing signal|ChildFailedError"
)
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\)")
_FIELD = re.compile(r"^\s*(host|rank|exitcode)\s*:\s*(\S+)")
_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")
_EXCEPTION = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure)\b.*)$")


def script_env(plan: Plan, env: dict[str, str]) -> None:
    """What a script run's ranks get on top of the node agent's environment (in place)."""
    if plan.entrypoint is None:
        return
    source_dir = str(Path(plan.entrypoint["source"]).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_dir, env.get("PYTHONPATH", "")) if p)
    if plan.gradient_accumulation_steps > 1:
        # Accelerator() reads it (and it takes precedence over a gradient_accumulation_steps argument);
        # it takes effect where the script wraps its step in accelerator.accumulate(model).
        env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(plan.gradient_accumulation_steps)


CAPTURE = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}  # Popen arguments for OutputTail


class OutputTail:
    """Copies a child's (merged) output to this process's stdout line by line, keeping the last lines."""

    def __init__(self, child: subprocess.Popen, keep: int = TAIL_LINES):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._thread = threading.Thread(target=self._pump, args=(child.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        out = sys.stdout.buffer
        for raw in iter(stream.readline, b""):
            try:
                out.write(raw)
                out.flush()
            except (OSError, ValueError):
                pass  # our own stdout is gone: keep draining the child so it never blocks
            self.lines.append(raw.decode(errors="replace").rstrip("\r\n"))
        stream.close()

    def join(self, timeout: float = 10) -> list[str]:
        self._thread.join(timeout)
        return list(self.lines)


def explain_script_failure(plan: Plan, machine_rank: int, returncode: int, lines: list[str]) -> dict:
    """Node status fields for a failed script run: `error` (one line: which rank, where, exit code,
    the exception), `rank`, `exit_code`, `peer_lost` (the rank only lost a peer that failed first)
    and `output_tail` (the last lines the script printed, without the launcher's own report)."""
    root = _root_cause(lines)
    output = _script_output(lines)
    exception = next((line for line in reversed(output) if _EXCEPTION.match(line)), None)
    rank = root.get("rank")
    if rank is None and plan.procs_per_node == 1:
        rank = machine_rank * plan.procs_per_node
    code = root.get("exitcode", returncode)
    where = f"rank {rank}" if rank is not None else "a rank"
    where += f" on {socket.gethostname()}"  # the node agent prefixes "node N: "
    if code < 0:
        try:
            ended = signal.Signals(-code).name
        except ValueError:
            ended = f"signal {-code}"
    else:
        ended = f"exit code {code}"
    shown = [line for line in output if line.strip()][-SHOWN_LINES:]
    if exception:  # what the script raised; a rank may still abort on its way out (SIGABRT)
        headline = f"{where} failed: {exception} ({ended})"
    elif code < 0:
        headline = f"{where} was killed by {ended}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    else:
        headline = f"{where} exited with code {code}"
    if not exception:
        headline += f"; last line: {shown[-1].strip()}" if shown else " before printing anything"
    return {
        "error": headline,
        "rank": rank,
        "exit_code": code,
        "peer_lost": bool(exception and PEER_LOST.search(exception)),
        "output_tail": shown,
    }


def _root_cause(lines: list[str]) -> dict:
    """torchrun's summary of the first failure: {"rank": int, "exitcode": int} (and its "host")."""
    found: dict = {}
    starts = [i for i, line in enumerate(lines) if _ROOT_CAUSE.search(line)]
    if not starts:
        return found
    for line in lines[starts[-1] + 1 : starts[-1] + 12]:
        match = _FIELD.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "host":
            found["host"] = value
        else:
            try:
                found[key] = int(value)
            except ValueError:
                pass
    return found


def _script_output(lines: list[str]) -> list[str]:
    """The lines before the launcher's own failure report, without torch's `[rankN]:` prefixes."""
    end = next((i for i, line in enumerate(lines) if _LAUNCHER_REPORT.search(line)), len(lines))
    return [_RANK_PREFIX.sub("", line) for line in lines[:end]]
