"""Join check before training: every node must reach the head node within a bounded time.

Without it a missing node makes the rendezvous wait silently (10 minutes by default). Here the
head node hosts a small torch TCPStore on port+1; each node writes `joined/<rank>` = its hostname;
the head waits until all keys exist and answers `go`, or fails naming the nodes that never came.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta


class JoinError(RuntimeError):
    pass


def join(head: str, port: int, machine_rank: int, nodes: int, timeout_s: int):
    """Returns the store (keep it alive: the head's store serves the other nodes)."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # retries are expected here; the error below says it all
    from torch.distributed import TCPStore

    host = socket.gethostname()
    deadline = time.monotonic() + timeout_s
    is_head = machine_rank == 0
    try:
        store = TCPStore(head, port, is_master=is_head, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for "unreachable"
        if is_head:
            raise JoinError(f"cannot listen on port {port} for the join check ({exc})") from None
        raise JoinError(f"cannot reach the head node {head}:{port} within {timeout_s} s ({type(exc).__name__})") from None
    store.set(f"joined/{machine_rank}", host)
    if is_head:
        keys = [f"joined/{rank}" for rank in range(nodes)]
        while True:
            missing = [rank for rank, key in enumerate(keys) if not store.check([key])]
            if not missing:
                break
            if time.monotonic() > deadline:
                joined = [f"node {rank} ({store.get(keys[rank]).decode()})" for rank in range(nodes) if rank not in missing]
                names = ", ".join(f"node {rank}" for rank in missing)
                raise JoinError(
                    f"{names} of {nodes} did not join within {timeout_s} s (joined: {', '.join(joined)}); "
                    "check that every node started and can reach the head node"
                )
            time.sleep(0.2)
        store.set("go", "1")
    else:
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
            store.wait(["go"], timedelta(seconds=remaining))
        except Exception:  # noqa: BLE001
            raise JoinError(
                f"the head node {head} did not see every node join within {timeout_s} s (another node is missing)"
            ) from None
    return store
