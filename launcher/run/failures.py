"""Why a node's ranks failed, in one line, from what the ranks wrote (the built-in trainer's
status files) or, for a user's own script, from what the node saw (launcher.run.script)."""

from __future__ import annotations

import re

from launcher.plan import Plan
from launcher.rundir.status import read_status

# A rank whose peer died fails with one of these; it is a consequence, not the cause.
PEER_LOST = re.compile(r"gloo|nccl|connection (closed|reset)|broken pipe|timed? ?out|DistBackendError", re.IGNORECASE)


def node_ranks(plan: Plan, machine_rank: int) -> range:
    first = machine_rank * plan.procs_per_node
    return range(first, first + plan.procs_per_node)


def stopped_on_request(plan: Plan, machine_rank: int, attempt: int) -> bool:
    """This node's ranks ended because they were asked to stop (outside the training loop, where
    there is nothing to checkpoint), not because of an error of their own: at least one says
    "stopped", the others "stopped" too or only lost a peer that stopped first."""
    states = []
    for rank in node_ranks(plan, machine_rank):
        status = read_status(plan.run_dir, "rank", rank)
        if status is None or status.get("attempt", 0) != attempt:
            return False
        lost = status["state"] == "failed" and PEER_LOST.search(status.get("error", ""))
        states.append("lost" if lost else status["state"])
    return "stopped" in states and set(states) <= {"stopped", "lost"}


def explain_failure(plan: Plan, machine_rank: int, returncode: int, attempt: int) -> dict:
    """Node status fields for a failed node of the built-in trainer: `error` (one line), `rank`,
    `peer_lost`. Order of blame: a rank that raised a real error; a rank that vanished (killed, out of
    memory); a rank that lost its peer; ranks that never started. Status files of an earlier attempt
    (a resumed run) say nothing about this one."""
    failed, peer_lost, vanished, never = [], [], [], []
    for rank in node_ranks(plan, machine_rank):
        status = read_status(plan.run_dir, "rank", rank)
        if status is None or status.get("attempt", 0) != attempt:
            never.append(rank)
        elif status["state"] == "failed":
            (peer_lost if PEER_LOST.search(status["error"]) else failed).append(status)
        elif status["state"] == "running":
            vanished.append(status)
    if failed:
        cause = min(failed, key=lambda s: s.get("ended", 0))
        return {"error": f"rank {cause['rank']} on {cause['host']} failed: {cause['error']}", "rank": cause["rank"],
                "peer_lost": False}  # fmt: skip
    if vanished:
        names = ", ".join(f"rank {s['rank']} (pid {s['pid']} on {s['host']})" for s in vanished)
        return {"error": f"{names} died without reporting an error (killed by a signal or out of memory?); "
                         f"exit code {returncode}", "rank": vanished[0]["rank"], "peer_lost": False}  # fmt: skip
    if peer_lost:
        cause = min(peer_lost, key=lambda s: s.get("ended", 0))
        return {"error": f"rank {cause['rank']} on {cause['host']} lost a peer (another node failed first?): "
                         f"{cause['error']}", "rank": cause["rank"], "peer_lost": True}  # fmt: skip
    if never:
        return {"error": f"rank(s) {', '.join(map(str, never))} never started; accelerate launch exited with {returncode}",
                "rank": never[0], "peer_lost": False}  # fmt: skip
    return {"error": f"accelerate launch exited with {returncode}", "rank": None, "peer_lost": False}
