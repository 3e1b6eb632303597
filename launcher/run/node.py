"""The node agent: `python -m launcher.run.node RUN_DIR --machine-rank R [--head H] [--port P]`.

One per node (srun starts it on Slurm, the local supervisor on this host). It
1. checks every node joined (bounded time, names the missing node),
2. runs `accelerate launch` for this node's ranks with the environment the plan needs,
3. passes stop requests on to the ranks (graceful: checkpoint, then stop) and, when they do not
   stop in time, kills every process below it,
4. on failure, says which rank failed and why (from the ranks' status files), and exits non-zero;
   node 0 writes the run's report once every node's status is final.

Nothing it started outlives it: it adopts orphans (a subreaper), `accelerate launch` gets SIGTERM
when the agent dies, and a local agent gets SIGTERM when its supervisor dies.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launcher import processes
from launcher.plan import Plan
from launcher.rundir.jobs import current_attempt
from launcher.rundir.layout import PLAN_FILE
from launcher.rundir.checkpoints import latest_valid
from launcher.rundir.status import (
    FINAL_STATES,
    read_requeue_marker,
    read_status,
    read_statuses,
    state_word,
    write_requeue_marker,
    write_status,
)
from launcher.run.failures import explain_failure, node_ranks, stopped_on_request
from launcher.run.script import CAPTURE, OutputTail, explain_script_failure, script_env

GRACE_S = 30  # after a hard stop, how long the ranks get before SIGKILL
STOP_GRACE_S = 600  # after a graceful stop request: time to finish the step and write a checkpoint
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint; the batch script requeues
SUPERVISOR_ENV = "FTL_SUPERVISOR_PID"  # a local run's `ftlaunch submit`: the agent stops when it dies
REPORT_WAIT_S = 30  # node 0 waits this long for the other nodes' final status before the report
# The agent scans /proc for its ranks this often: a scan costs ~4 ms of a core, and at 5 scans a
# second the agent took 7% of a core from a 2-core host's training ranks.
SCAN_S = 2.0
EXIT_BARRIER_S = 60  # after this node's ranks ended, how long its launcher may wait for the other nodes


def child_env(plan: Plan, machine_rank: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(SUPERVISOR_ENV, None)
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
        # Slurm: the CPUs of this node's one task (sbatch.sh passes --cpus-per-task to srun)
        slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
        cores = int(slurm_cpus or 0) or len(os.sched_getaffinity(0))
        env["OMP_NUM_THREADS"] = str(max(1, cores // sharing))
    if plan.device == "xla":  # PJRT: the TPU chips, or XLA on the CPU where the plan found none
        env["PJRT_DEVICE"] = plan.xla["pjrt_device"]
    if plan.target == "local" and plan.device == "cuda" and plan.nodes > 1:
        # N "nodes" on one host: each gets its own slice of the GPUs (CUDA_VISIBLE_DEVICES, or ROCm's variables).
        from launcher.gpus import node_share

        env.update(node_share(os.environ, machine_rank, plan.procs_per_node))
    script_env(plan, env)  # the user's own script: PYTHONPATH, gradient accumulation
    return env


def write_node_status(plan: Plan, machine_rank: int, **fields) -> None:
    payload = {"node": machine_rank, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **fields}
    write_status(plan.run_dir, "node", machine_rank, payload)


class Launch:
    """`accelerate launch` for this node's ranks, and every way of stopping them."""

    def __init__(self, plan: Plan, machine_rank: int, head: str, port: int, attempt: int):
        self.plan = plan
        self.machine_rank = machine_rank
        self.attempt = attempt
        agent = os.getpid()

        def in_child() -> None:
            # The launcher ignores USR2: Slurm may signal every process of the step, and only the ranks
            # act on it (checkpoint, then stop); they install their own handler. SIGTERM when this agent
            # dies: torchrun then stops its ranks.
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            processes.die_with_parent(signal.SIGTERM, expected_parent=agent)

        # A user's own script writes no status files: its output passes through here (to the node log,
        # as before) so that a failure can be explained from its last lines.
        self.child = subprocess.Popen(
            plan.launch_argv(machine_rank, head, port), env=child_env(plan, machine_rank),
            start_new_session=True, preexec_fn=in_child, **(CAPTURE if plan.entrypoint else {}),
        )  # fmt: skip
        self.tail = OutputTail(self.child) if plan.entrypoint else None
        self.deadline: float | None = None  # after a stop request: when the ranks get killed
        self.stop_signal: int | None = None

    def ranks(self, parents: dict[int, int] | None = None) -> list[int]:
        """The rank processes: torchrun's workers (each in a session of its own), and any the agent
        adopted because their launcher died."""
        parents = processes.parent_map() if parents is None else parents
        adopted = [p for p in processes.children(os.getpid(), parents) if p != self.child.pid]
        return processes.children(self.child.pid, parents) + adopted

    def request_stop(self, graceful: bool) -> None:
        """Graceful: the ranks finish the step, agree, write a checkpoint and stop. Otherwise: stop now
        (torchrun terminates its workers on SIGTERM); either way they are killed if they take too long."""
        if graceful:
            processes.signal_all(self.ranks(), signal.SIGUSR2)
        else:
            processes.signal_all([*self.ranks(), self.child.pid], signal.SIGTERM)
        wait = STOP_GRACE_S if graceful else GRACE_S
        self.deadline = min(self.deadline or float("inf"), time.monotonic() + wait)

    def wait(self, say) -> int:
        """The launcher's exit code; 0 whenever every rank of this node ended well (torchrun may fail,
        or wait up to 5 minutes, at its exit barrier when another node's launcher is gone)."""
        ranks_seen, ranks_gone_at, next_scan = False, None, 0.0
        while self.child.poll() is None:
            if self.deadline is not None and time.monotonic() > self.deadline:
                say("the ranks did not stop in time: killing them")
                self.kill()
            if time.monotonic() >= next_scan:  # /proc, seldom: the ranks share this host's cores
                next_scan = time.monotonic() + SCAN_S
                parents = processes.parent_map()
                ranks = self.ranks(parents)
                ranks_seen = ranks_seen or bool(ranks)
                ranks_gone_at = (ranks_gone_at or time.monotonic()) if ranks_seen and not ranks else None
                if ranks_gone_at and time.monotonic() - ranks_gone_at > EXIT_BARRIER_S:
                    say(f"the launcher still waits for the other nodes {EXIT_BARRIER_S} s after this node's ranks "
                        "ended: stopping it")  # fmt: skip
                    self.kill()
                    self.child.wait()
                    break
                processes.reap_adopted(keep=self.child.pid, parents=parents)
            time.sleep(0.2)
        self.kill_leftovers()
        if self.child.returncode != 0 and self.ended_well():
            # torchrun's exit barrier fails when another node's launcher ended differently (stopped,
            # failed): this node's own ranks finished their work, and that is what counts here.
            return 0
        return self.child.returncode

    def ended_well(self) -> bool:
        if self.plan.entrypoint is not None:  # a script's ranks write no status: nothing to tell by
            return False
        statuses = [read_status(self.plan.run_dir, "rank", r) for r in node_ranks(self.plan, self.machine_rank)]
        return all(s is not None and s.get("attempt") == self.attempt and s["state"] == "done" for s in statuses)

    def kill(self) -> None:
        processes.signal_all(processes.descendants(os.getpid()), signal.SIGKILL)

    def kill_leftovers(self) -> None:
        """After the launcher ended, nothing of this node may keep running (a rank it failed to stop)."""
        left = [p for p in processes.descendants(os.getpid()) if not processes.is_zombie(p)]
        if left:
            processes.signal_all(left, signal.SIGKILL)
        for _ in range(50):
            processes.reap_adopted(keep=-1)
            if not [p for p in processes.descendants(os.getpid()) if not processes.is_zombie(p)]:
                break
            time.sleep(0.1)


def run_node(plan: Plan, machine_rank: int, head: str, port: int) -> int:
    say = lambda text: print(f"[ftlaunch node {machine_rank}] {text}", flush=True)  # noqa: E731
    processes.adopt_orphans()
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor:  # a local run: when `ftlaunch submit --local` dies, this node stops as if asked to
        processes.die_with_parent(signal.SIGTERM, expected_parent=int(supervisor))
    attempt = current_attempt()
    say(f"host {socket.gethostname()}, head {head}:{port}, {plan.procs_per_node} process(es), world {plan.world_size}")
    write_node_status(plan, machine_rank, state="joining", attempt=attempt)
    store = None
    if plan.nodes > 1 and plan.device != "xla":  # XLA: PJRT checks its peers itself
        from launcher.run.join import JoinError, join

        try:
            store = join(head, port + 1, machine_rank, plan.nodes, plan.rendezvous.join_timeout_s)
        except JoinError as exc:
            message = f"node {machine_rank}: {exc}"
            write_node_status(plan, machine_rank, state="failed", error=message, attempt=attempt)
            print(f"ftlaunch node {machine_rank}: error: {exc}", file=sys.stderr, flush=True)
            return 3
        say(f"all {plan.nodes} nodes joined")

    say("launch: " + " ".join(plan.launch_argv(machine_rank, head, port)))
    write_node_status(plan, machine_rank, state="running", attempt=attempt)
    launched = time.time()
    launch = Launch(plan, machine_rank, head, port, attempt)

    def on_signal(signum, _frame):
        # Graceful (USR2 from Slurm, SIGTERM): ask this node's ranks to checkpoint and stop.
        # SIGINT: stop now.
        if plan.entrypoint is not None and signum == signal.SIGUSR2:
            # A user's script has no checkpoint protocol: USR2 goes to its ranks, which act on it only
            # if the script installed a handler.
            processes.signal_all(launch.ranks(), signal.SIGUSR2)
            return
        graceful = signum != signal.SIGINT and plan.entrypoint is None
        if graceful and launch.deadline is not None:
            # Already stopping. A repeated SIGTERM is not a request to hurry: the kernel sends the
            # parent-death signal again for every thread of a dying multi-threaded parent.
            return
        launch.stop_signal = launch.stop_signal or signum
        launch.request_stop(graceful)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, on_signal)
    returncode = launch.wait(say)
    output = launch.tail.join() if launch.tail else []
    del store  # the head's join store stays up until here: other nodes may still be reading "go"
    marker = read_requeue_marker(Path(plan.run_dir))
    marker = marker if marker and marker.get("time", 0) >= launched else None
    if marker is None and returncode != 0 and plan.entrypoint is None and stopped_on_request(plan, machine_rank, attempt):
        # Stopped before or after the training loop: nothing new to checkpoint; the run goes on from
        # its newest checkpoint (or from the start), so Slurm requeues it like any preempted job.
        found = latest_valid(Path(plan.run_dir))
        step, checkpoint = (found[1]["step"], found[0]) if found else (0, None)
        write_requeue_marker(Path(plan.run_dir), step, checkpoint, launch.stop_signal)
        marker = read_requeue_marker(Path(plan.run_dir))
    if marker:
        write_node_status(plan, machine_rank, state="stopped", step=marker["step"], checkpoint=marker["checkpoint"],
                          attempt=attempt)  # fmt: skip
        where = f"checkpoint {marker['checkpoint']}" if marker["checkpoint"] else "no checkpoint yet (nothing to lose)"
        say(f"stopped at step {marker['step']} ({marker['signal']}); {where}")
        if machine_rank == 0:
            write_report(plan, say)
        return EXIT_RESUMABLE
    if returncode == 0:
        write_node_status(plan, machine_rank, state="done", returncode=0, attempt=attempt)
        say("done")
        if machine_rank == 0 and plan.entrypoint is None:
            write_report(plan, say)
        return 0
    if plan.entrypoint is not None:
        details = explain_script_failure(plan, machine_rank, returncode, output)
    else:
        details = explain_failure(plan, machine_rank, returncode, attempt)
    reason = details.pop("error")
    write_node_status(plan, machine_rank, state="failed", error=f"node {machine_rank}: {reason}", returncode=returncode,
                      attempt=attempt, **details)  # fmt: skip
    print(f"ftlaunch node {machine_rank}: error: {reason}", file=sys.stderr, flush=True)
    return returncode if returncode > 0 else 1


def write_report(plan: Plan, say) -> None:
    """The run's report, once every node's status is final (so it shows how each node ended); a
    finished job must not fail because a plot could not be drawn: `ftlaunch collect RUN` redoes it."""
    deadline = time.monotonic() + REPORT_WAIT_S
    while time.monotonic() < deadline:
        nodes = read_statuses(plan.run_dir, "node")
        if len(nodes) >= plan.nodes and all(state_word(d) in FINAL_STATES for d in nodes.values()):
            break
        time.sleep(0.2)
    try:
        from launcher.collect import collect_run

        collect_run(plan.run_dir, quiet=True)
        say(f"report: {Path(plan.run_dir) / 'report.md'}")
    except Exception as exc:  # noqa: BLE001
        say(f"warning: no report ({type(exc).__name__}: {exc}); run ftlaunch collect {plan.run_dir}")


def fit_allocation(plan: Plan, machine_rank: int) -> Plan:
    """An elastic Slurm job (cluster.min_nodes) got SLURM_JOB_NUM_NODES nodes: re-plan for them, keeping
    the global batch. Every node computes the same plan (a pure function of the run dir's recipe and
    plan) and writes the same plan.json, accelerate.yaml and recipe.yaml before its ranks start;
    node 0 keeps the plan the earlier attempts ran with in plans/."""
    allocated = int(os.environ.get("SLURM_JOB_NUM_NODES") or plan.nodes)
    if plan.min_nodes is None or allocated == plan.nodes:
        return plan
    from launcher.plan import HostFacts
    from launcher.plan.elastic import replan
    from launcher.recipe import dump_recipe, load_resolved
    from launcher.render import render_files
    from launcher.rundir.durable import write_durable
    from launcher.rundir.jobs import current_attempt
    from launcher.rundir.layout import PLANS_DIR, RECIPE_FILE

    run_dir = Path(plan.run_dir)
    recipe, moved = replan(load_resolved(run_dir / RECIPE_FILE), plan, HostFacts(python=plan.python), nodes=allocated,
                           field="cluster.min_nodes")  # fmt: skip
    if machine_rank == 0:
        write_durable(run_dir / PLANS_DIR / f"before-attempt-{current_attempt()}.json",
                      json.dumps(plan.to_dict(), indent=2) + "\n")  # fmt: skip
    header = f"# Re-planned by the node agents for the {allocated} node(s) Slurm gave attempt {current_attempt()}\n"
    files = {**render_files(moved, recipe), RECIPE_FILE: header + dump_recipe(recipe)}
    for name in ("plan.json", "accelerate.yaml", RECIPE_FILE):
        write_durable(run_dir / name, files[name])
    print(f"[ftlaunch node {machine_rank}] {moved.notes[-1]}", flush=True)
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.run.node", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--machine-rank", type=int, required=True)
    parser.add_argument("--head", help="address of node 0 (default: from plan.json)")
    parser.add_argument("--port", type=int, help="rendezvous port (default: from plan.json); join check on port+1")
    args = parser.parse_args(argv)
    plan = fit_allocation(Plan.from_dict(json.loads((Path(args.run_dir) / PLAN_FILE).read_text())), args.machine_rank)
    head = args.head or plan.rendezvous.head
    port = args.port or plan.rendezvous.port
    if not 0 <= args.machine_rank < plan.nodes:
        parser.error(f"--machine-rank {args.machine_rank} is outside 0..{plan.nodes - 1}")
    if port is None and plan.device != "xla":
        parser.error("--port is required (the plan derives it from the Slurm job id at run time)")
    return run_node(plan, args.machine_rank, head, port)


if __name__ == "__main__":
    sys.exit(main())
