"""Who this process is (rank, node), known from the launcher's environment before any setup."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from launcher.rundir.jobs import current_attempt


@dataclass(frozen=True)
class RankIdentity:
    rank: int
    local_rank: int
    node: int
    host: str
    attempt: int  # 0 on the first run, +1 per requeue (Slurm) or --resume

    @classmethod
    def from_env(cls, procs_per_node: int) -> RankIdentity:
        rank = int(os.environ.get("RANK", "0"))
        node = int(os.environ.get("GROUP_RANK", rank // max(procs_per_node, 1)))
        return cls(
            rank=rank,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            node=node,
            host=socket.gethostname(),
            attempt=current_attempt(),
        )
