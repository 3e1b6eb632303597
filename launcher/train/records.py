"""Metric records: one JSON Lines file per rank (every rank writes its own; tagged with rank and node)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from launcher.train.identity import RankIdentity


def rank_metrics_path(run_dir: Path, rank: int) -> Path:
    return run_dir / "metrics" / f"rank-{rank}.jsonl"


class RankRecords:
    def __init__(self, run_dir: Path, who: RankIdentity):
        self.path = rank_metrics_path(run_dir, who.rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tags = {"rank": who.rank, "node": who.node, "host": who.host, "attempt": who.attempt}
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, **fields) -> None:
        record = {"type": kind, **fields, **self.tags, "time": round(time.time(), 3)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
