"""Local runs: N node agents on this host (machine ranks 0..N-1 on 127.0.0.1), supervised by
`ftlaunch submit --local` (this process).

Each node writes everything to run_dir/logs/node-N.log; the console shows ftlaunch's own lines of
node 0 (a user's script: every line of every node, prefixed by node). When one node fails, the
others are stopped at once and the error names the node, the rank and the log.

Signals to this process: SIGTERM, SIGHUP and a first Ctrl-C stop the job gracefully (the ranks
checkpoint and stop, resumable); a second Ctrl-C or SIGQUIT stops it now. If this process dies
(even by SIGKILL), every node agent gets SIGTERM from the kernel and stops gracefully, so no rank
outlives its supervisor; `ftlaunch cancel RUN` signals this process through job.json.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from rich.console import Console

from launcher.errors import JobFailed
from launcher.plan import Plan
from launcher.rundir.durable import read_json
from launcher.rundir.jobs import ATTEMPT_BASE_ENV, local_job_record, write_job_record
from launcher.rundir.layout import MODEL_DIR, RESULTS_FILE, node_log_path
from launcher.rundir.status import read_requeue_marker, read_status
from launcher.run.node import EXIT_RESUMABLE, SUPERVISOR_ENV

STOP_GRACE_S = 40  # after a hard stop the node agent gives its ranks 30 s
ROOT_CAUSE_WAIT_S = 3.0  # after a node fails: how long the others get to fail too, before they are stopped
OWN_LINES = ("[train]", "[ftlaunch node")  # what the console shows of a built-in trainer run


class ConsoleTail:
    """Follows the node logs and prints what the user should see while the job runs."""

    def __init__(self, plan: Plan, console: Console):
        self.plan = plan
        self.console = console
        self.positions: dict[int, int] = {}
        self.partial: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain(final=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._drain()

    def _nodes(self) -> range:
        return range(self.plan.nodes) if self.plan.entrypoint is not None else range(1)

    def _drain(self, final: bool = False) -> None:
        for node in self._nodes():
            try:
                with node_log_path(self.plan.run_dir, node).open("rb") as handle:
                    handle.seek(self.positions.get(node, 0))
                    chunk = handle.read()
            except OSError:
                continue
            self.positions[node] = self.positions.get(node, 0) + len(chunk)
            data = self.partial.pop(node, b"") + chunk
            lines = data.split(b"\n")
            if not final:
                self.partial[node] = lines.pop()
            for raw in lines:
                self._show(node, raw.decode(errors="replace").rstrip("\r"))

    def _show(self, node: int, line: str) -> None:
        if self.plan.entrypoint is None:
            if line.startswith(OWN_LINES):
                self.console.out(line, highlight=False)
        elif line or self.plan.nodes == 1:
            prefix = f"[node {node}] " if self.plan.nodes > 1 else ""
            self.console.out(prefix + line, highlight=False)


def _stop_now(procs: list[subprocess.Popen]) -> None:
    """Hard stop (another node failed, or a second Ctrl-C): SIGINT makes a node agent stop its ranks
    at once; an agent that does not end in time is killed with everything below it."""
    from launcher import processes

    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            processes.signal_all([*processes.descendants(proc.pid), proc.pid], signal.SIGKILL)
            proc.wait()


def failure_message(plan: Plan, node: int, returncode: int) -> str:
    """One line naming the node, the rank and why; then where to look, and how to go on."""
    status = read_status(plan.run_dir, "node", node) or {}
    log = node_log_path(plan.run_dir, node)
    reason = status.get("error") or f"node {node} exited with code {returncode} ({_signal_name(returncode)})"
    lines = [reason, f"  log: {log}"]
    if status.get("output_tail"):  # a user's own script: its last lines, not the launcher's report
        lines.append("  last lines of its output:")
        lines += ["    " + line for line in status["output_tail"]]
    elif "never started" in reason or not status.get("error"):  # nothing else says why: the log's end does
        lines.append("  last lines:")
        lines += ["    " + line for line in _log_tail(log)]
    hint = resume_hint(plan)
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)


def resume_hint(plan: Plan) -> str | None:
    from launcher.rundir.checkpoints import last_checkpoint_step

    if plan.entrypoint is not None or (Path(plan.run_dir) / RESULTS_FILE).exists():
        return None
    step = last_checkpoint_step(Path(plan.run_dir))
    if step is None:
        return None
    return f"continue from the checkpoint at step {step}: ftlaunch submit --resume {plan.run_dir} --local"


def _log_tail(path: Path, count: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-count:]
    except OSError:
        return ["(no log)"]


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return "see its log"


def _finished(plan: Plan) -> bool:
    """results.json is written and every node said done before it ended."""
    done = [(read_status(plan.run_dir, "node", node) or {}).get("state") == "done" for node in range(plan.nodes)]
    return (Path(plan.run_dir) / RESULTS_FILE).exists() and all(done)


def _only_lost_peers(plan: Plan, failed: list[tuple[int, int]]) -> bool:
    """After a stop request: the failed nodes' ranks only lost peers that stopped first."""
    return all((read_status(plan.run_dir, "node", node) or {}).get("peer_lost") for node, _code in failed)


def root_cause(plan: Plan, procs: list[subprocess.Popen], failed: list[tuple[int, int]]) -> tuple[int, int]:
    """The failed node to blame. A node whose rank only lost its peer fails a moment after the node
    that really failed, often within the same poll: give the others a moment, then prefer a node
    whose error is its own over one that lost a peer, and the earliest among those."""
    deadline = time.monotonic() + ROOT_CAUSE_WAIT_S
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    codes = [proc.poll() for proc in procs]
    failed = [(node, code) for node, code in enumerate(codes) if code not in (None, 0, EXIT_RESUMABLE)] or failed

    def blame(item: tuple[int, int]) -> tuple[bool, float]:
        status = read_status(plan.run_dir, "node", item[0]) or {}
        return bool(status.get("peer_lost")), float(status.get("time", float("inf")))

    return min(failed, key=blame)


def run_local(plan: Plan, console: Console, attempt_base: int = 0) -> int:
    run_dir = Path(plan.run_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ATTEMPT_BASE_ENV: str(attempt_base), SUPERVISOR_ENV: str(os.getpid())})
    logs = [node_log_path(run_dir, node).open("ab") for node in range(plan.nodes)]
    tail = ConsoleTail(plan, console)
    tail.start()
    console.print(f"logs: {run_dir / 'logs'}/node-N.log", markup=False, highlight=False, soft_wrap=True)
    procs = [
        subprocess.Popen(plan.node_argv(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)  # its own process group: a terminal's Ctrl-C reaches only us
        for node, log in enumerate(logs)
    ]  # fmt: skip
    for log in logs:
        log.close()
    write_job_record(run_dir, local_job_record(attempt_base, [p.pid for p in procs]))

    stops = {"graceful": False, "now": False}

    def request_stop(signum=None, _frame=None) -> None:
        if signum == signal.SIGQUIT or (stops["graceful"] and signum == signal.SIGINT):
            stops["now"] = True
            return
        if stops["graceful"]:
            return  # a repeated SIGTERM/SIGHUP changes nothing: the ranks are already stopping
        stops["graceful"] = True
        console.print("[yellow]stop requested: the ranks checkpoint and stop (again to stop at once)[/]")
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    previous = {signum: signal.signal(signum, request_stop) for signum in handled}
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            bad = [(node, code) for node, code in enumerate(codes) if code not in (None, 0, EXIT_RESUMABLE)]
            if bad and not (stops["graceful"] and _only_lost_peers(plan, bad)):
                failed = root_cause(plan, procs, bad)
                break
            if all(code is not None for code in codes):
                break
            if stops["now"]:
                break
            time.sleep(0.2)
    finally:
        if failed or stops["now"]:
            _stop_now(procs)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        tail.stop()
    codes = [proc.returncode for proc in procs]
    if not failed and EXIT_RESUMABLE not in codes and any(code not in (0, None) for code in codes):
        failed = root_cause(plan, procs, [(n, c) for n, c in enumerate(codes) if c not in (0, None)])
    if failed and _finished(plan):
        # Training, the model and results.json are complete; only the report (derived data) is not.
        node, code = failed
        console.print(f"[yellow]warning[/]: the job finished (results.json, model/) but node {node} ended with "
                      f"code {code} ({_signal_name(code)}) while writing the report: ftlaunch collect {run_dir}")  # fmt: skip
        failed = None
    if failed:
        node, code = failed
        raise JobFailed(failure_message(plan, node, code), exit_code=1)
    if any(proc.returncode == EXIT_RESUMABLE for proc in procs):
        marker = read_requeue_marker(run_dir) or {}
        if not marker.get("checkpoint"):
            console.print("[yellow]stopped[/] before the first checkpoint (nothing was trained yet); "
                          "submit the recipe again to start over")  # fmt: skip
            return 130
        console.print(f"[yellow]stopped[/] at step {marker.get('step', '?')} with a checkpoint; "
                      f"continue with: ftlaunch submit --resume {run_dir} --local")  # fmt: skip
        return EXIT_RESUMABLE
    if stops["now"]:
        hint = resume_hint(plan)
        raise JobFailed("stopped at once on request" + (f"\n  {hint}" if hint else ""), exit_code=130)
    results = read_json(run_dir / RESULTS_FILE)
    if results:
        final = results.get("final_eval") or {}
        metrics = {k: round(v, 4) for k, v in final.get("metrics", {}).items()}
        console.print(f"[bold green]done[/]: {metrics}  model: {run_dir / MODEL_DIR}")
        baseline = final.get("baseline")
        if baseline:
            scores = {k: round(v, 4) for k, v in baseline["metrics"].items()}
            console.print(f"majority-class baseline (always class {baseline['majority_class']}): {scores}")
            predicted = final.get("predicted_per_class") or []
            if sum(1 for n in predicted if n) == 1:
                console.print("[yellow]warning[/]: the model predicts one class for every eval row: it has not "
                              "learned to tell the classes apart yet (train longer, or try another lr)")  # fmt: skip
    console.print(f"run dir: {run_dir}")
    return 0
