"""The node agent: `python -m launcher.run.node RUN_DIR --machine-rank R [--head H] [--port P]`.

One per node (srun starts it on Slurm, the local supervisor on this host). It
1. checks every node joined (bounded time, names the missing node),
2. runs `accelerate launch` for this node's ranks with the environment the plan needs,
3. on failure, says which rank failed and why (from the ranks' status files), and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launcher.plan import Plan
from launcher.run.script import CAPTURE, OutputTail, explain_script_failure, script_env
from launcher.train.preemption import read_requeue_marker

GRACE_S = 30  # after a hard stop, how long the ranks get before SIGKILL
STOP_GRACE_S = 600  # after a graceful stop request: time to finish the step and write a checkpoint
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; the batch script requeues


def child_env(plan: Plan, machine_rank: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["FTL_RUN_DIR"] = plan.run_dir
    env["FTL_NODE_RANK"] = str(machine_rank)
    if plan.device == "cpu":
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's probe would warn on every rank
        if plan.backend != "deepspeed":
            # Without this, `accelerate launch` on a CPU host starts N processes that each train alone.
            env["ACCELERATE_USE_CPU"] = "1"
    if "OMP_NUM_THREADS" not in os.environ:
        # accelerate would set 1 thread per process; give each rank its share of this node's cores.
        sharing = plan.world_size if plan.target == "local" else plan.procs_per_node
        cores = int(os.environ.get("SLURM_CPUS_ON_NODE", 0)) or len(os.sched_getaffinity(0))
        env["OMP_NUM_THREADS"] = str(max(1, cores // sharing))
    if plan.device == "xla":  # PJRT: the TPU chips, or XLA on the CPU where the plan found none
        env["PJRT_DEVICE"] = plan.xla["pjrt_device"]
    if plan.target == "local" and plan.device == "cuda" and plan.nodes > 1:
        # N "nodes" on one host: each gets its own slice of the GPUs.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(plan.nodes * plan.procs_per_node)]
        mine = gpus[machine_rank * plan.procs_per_node : (machine_rank + 1) * plan.procs_per_node]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    script_env(plan, env)  # the user's own script: PYTHONPATH, gradient accumulation
    return env


def node_status_path(run_dir: str | Path, machine_rank: int) -> Path:
    return Path(run_dir) / "status" / f"node-{machine_rank}.json"


# A rank whose peer died fails with one of these; it is a consequence, not the cause.
_PEER_LOST = re.compile(r"gloo|nccl|connection (closed|reset)|broken pipe|timed? ?out", re.IGNORECASE)


def explain_failure(plan: Plan, machine_rank: int, returncode: int) -> str:
    """The root cause among this node's ranks, from their status files. Order of blame: a rank that
    raised a real error; a rank that vanished (killed, out of memory); a rank that lost its peer."""
    first = machine_rank * plan.procs_per_node
    failed, peer_lost, vanished, never = [], [], [], []
    for rank in range(first, first + plan.procs_per_node):
        path = Path(plan.run_dir) / "status" / f"rank-{rank}.json"
        if not path.exists():
            never.append(rank)
            continue
        status = json.loads(path.read_text())
        if status["state"] == "failed":
            (peer_lost if _PEER_LOST.search(status["error"]) else failed).append(status)
        elif status["state"] == "running":
            vanished.append(status)
    if failed:
        cause = min(failed, key=lambda s: s.get("ended", 0))
        return f"rank {cause['rank']} on {cause['host']} failed: {cause['error']}"
    if vanished:
        names = ", ".join(f"rank {s['rank']} (pid {s['pid']} on {s['host']})" for s in vanished)
        return f"{names} died without reporting an error (killed by a signal or out of memory?); exit code {returncode}"
    if peer_lost:
        cause = min(peer_lost, key=lambda s: s.get("ended", 0))
        return f"rank {cause['rank']} on {cause['host']} lost a peer (another node failed first?): {cause['error']}"
    if never:
        return f"rank(s) {', '.join(map(str, never))} never started; accelerate launch exited with {returncode}"
    return f"accelerate launch exited with {returncode}"


def write_node_status(plan: Plan, machine_rank: int, **fields) -> None:
    from launcher.jsonfiles import write_json_atomic

    payload = {"node": machine_rank, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **fields}
    write_json_atomic(node_status_path(plan.run_dir, machine_rank), payload)


def run_node(plan: Plan, machine_rank: int, head: str, port: int) -> int:
    say = lambda text: print(f"[ftlaunch node {machine_rank}] {text}", flush=True)  # noqa: E731
    say(f"host {socket.gethostname()}, head {head}:{port}, {plan.procs_per_node} process(es), world {plan.world_size}")
    write_node_status(plan, machine_rank, state="joining")
    store = None
    if plan.nodes > 1 and plan.device != "xla":  # XLA: PJRT checks its peers itself
        from launcher.run.join import JoinError, join

        try:
            store = join(head, port + 1, machine_rank, plan.nodes, plan.rendezvous.join_timeout_s)
        except JoinError as exc:
            message = f"node {machine_rank}: {exc}"
            write_node_status(plan, machine_rank, state="failed", error=message)
            print(f"ftlaunch node {machine_rank}: error: {exc}", file=sys.stderr, flush=True)
            return 3
        say(f"all {plan.nodes} nodes joined")

    argv = plan.launch_argv(machine_rank, head, port)
    say("launch: " + " ".join(argv))
    write_node_status(plan, machine_rank, state="running")
    launched = time.time()
    # The launcher (torchrun) ignores USR2: Slurm may signal every process of the step, and only the
    # ranks act on it (checkpoint, then stop). The ranks install their own handler.
    # A user's own script writes no status files: its output passes through here (to the node log,
    # as before) so that a failure can be explained from its last lines.
    child = subprocess.Popen(
        argv, env=child_env(plan, machine_rank), start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN),
        **(CAPTURE if plan.entrypoint else {}),
    )  # fmt: skip
    tail = OutputTail(child) if plan.entrypoint else None
    hard_stop_at: list[float] = []

    def request_stop(signum, _frame):
        # Graceful (USR2 from Slurm, SIGTERM): ask this node's ranks to checkpoint and stop.
        # SIGINT, or a second request: stop now (torchrun terminates its workers on SIGTERM).
        if plan.entrypoint is not None and signum == signal.SIGUSR2:
            # A user's script has no checkpoint protocol: USR2 goes to its process group, where the
            # launcher ignores it and a rank acts on it only if the script installed a handler.
            try:
                os.killpg(child.pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass
            return
        graceful = signum != signal.SIGINT and not hard_stop_at and plan.entrypoint is None
        for pid in rank_pids(plan, machine_rank):
            try:
                os.kill(pid, signal.SIGUSR2 if graceful else signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not graceful:
            child.send_signal(signal.SIGTERM)
        hard_stop_at.append(time.monotonic() + (STOP_GRACE_S if graceful else GRACE_S))

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, request_stop)
    while child.poll() is None:
        if hard_stop_at and time.monotonic() > hard_stop_at[-1]:
            say("the ranks did not stop in time: killing them")
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(0.2)
    returncode = child.returncode
    output = tail.join() if tail else []
    del store  # the head's join store stays up until here: other nodes may still be reading "go"
    marker = read_requeue_marker(Path(plan.run_dir))
    if marker and marker.get("time", 0) >= launched:
        write_node_status(plan, machine_rank, state="stopped", step=marker["step"], checkpoint=marker["checkpoint"])
        say(f"stopped at step {marker['step']} ({marker['signal']}); checkpoint {marker['checkpoint']}")
        return EXIT_RESUMABLE
    if returncode == 0:
        write_node_status(plan, machine_rank, state="done", returncode=0)
        say("done")
        return 0
    details: dict = {}
    if plan.entrypoint is not None:
        details = explain_script_failure(plan, machine_rank, returncode, output)
        reason = details.pop("error")
    else:
        reason = explain_failure(plan, machine_rank, returncode)
    write_node_status(
        plan, machine_rank, state="failed", error=f"node {machine_rank}: {reason}", returncode=returncode, **details
    )
    print(f"ftlaunch node {machine_rank}: error: {reason}", file=sys.stderr, flush=True)
    return returncode if returncode > 0 else 1


def rank_pids(plan: Plan, machine_rank: int) -> list[int]:
    """PIDs of this node's ranks, from the status files they write when they start."""
    pids = []
    first = machine_rank * plan.procs_per_node
    for rank in range(first, first + plan.procs_per_node):
        try:
            status = json.loads((Path(plan.run_dir) / "status" / f"rank-{rank}.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if status.get("state") == "running" and status.get("host") == socket.gethostname():
            pids.append(int(status["pid"]))
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.run.node", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--machine-rank", type=int, required=True)
    parser.add_argument("--head", help="address of node 0 (default: from plan.json)")
    parser.add_argument("--port", type=int, help="rendezvous port (default: from plan.json); join check on port+1")
    args = parser.parse_args(argv)
    plan = Plan.from_dict(json.loads((Path(args.run_dir) / "plan.json").read_text()))
    head = args.head or plan.rendezvous.head
    port = args.port or plan.rendezvous.port
    if not 0 <= args.machine_rank < plan.nodes:
        parser.error(f"--machine-rank {args.machine_rank} is outside 0..{plan.nodes - 1}")
    if port is None and plan.device != "xla":
        parser.error("--port is required (the plan derives it from the Slurm job id at run time)")
    return run_node(plan, args.machine_rank, head, port)


if __name__ == "__main__":
    sys.exit(main())
