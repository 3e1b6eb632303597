"""Read every rank's metric records (metrics/rank-R.jsonl) and merge them into one list in step
order, without duplicates, across restarts.

Merge rule (a preempted job resumed from a checkpoint at step S may log steps > S again):
  * an attempt's resume step is its `resume` record's step, else its first train step - 1;
  * a record of an older attempt whose step is past the resume step of any newer attempt is dropped
    (that newer attempt redid those steps from the checkpoint);
  * of the records left with the same (type, rank, step), the one of the highest attempt is kept
    (the last written, within one attempt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Within one step: what happened at it, in order (a resume from step S comes after attempt 0's
# checkpoint and preemption at S); unknown types after these, before the summary.
TYPE_ORDER = {"setup": 0, "train": 1, "eval": 2, "checkpoint": 3, "preempted": 4, "resume": 5, "summary": 7}


@dataclass
class RecordSet:
    records: list[dict]  # every record read, in file order (rank files by rank)
    files: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # "rank-1.jsonl:17" for lines that do not parse


def rank_files(run_dir: Path) -> list[Path]:
    def rank_of(path: Path) -> int:
        suffix = path.stem.removeprefix("rank-")
        return int(suffix) if suffix.isdigit() else 1 << 30

    return sorted((run_dir / "metrics").glob("rank-*.jsonl"), key=lambda p: (rank_of(p), p.name))


def read_records(run_dir: Path) -> RecordSet:
    """Every record of every rank. A line that does not parse (the last line of a rank still writing,
    a file cut by a crash) is skipped and named in `unreadable`."""
    result = RecordSet(records=[])
    for path in rank_files(run_dir):
        result.files.append(path)
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or "type" not in record:
                    result.unreadable.append(f"{path.name}:{number}")
                    continue
                record.setdefault("attempt", 0)
                result.records.append(record)
    return result


def attempt_of(record: dict) -> int:
    attempt = record.get("attempt")
    return attempt if isinstance(attempt, int) else 0


def step_of(record: dict) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) else None


def resume_steps(records: list[dict]) -> dict[int, int]:
    """attempt -> the step it resumed from, for every attempt after the first that says or shows it."""
    attempts = sorted({attempt_of(r) for r in records})
    found: dict[int, int] = {}
    for attempt in attempts[1:]:
        own = [r for r in records if attempt_of(r) == attempt]
        said = [step_of(r) for r in own if r["type"] == "resume" and step_of(r) is not None]
        trained = [step_of(r) for r in own if r["type"] == "train" and step_of(r) is not None]
        if said:
            found[attempt] = min(said)
        elif trained:
            found[attempt] = min(trained) - 1
    return found


def superseded(record: dict, resumed: dict[int, int]) -> bool:
    """True when a newer attempt redid this record's step from an earlier checkpoint."""
    step = step_of(record)
    if step is None or record["type"] == "resume":
        return False
    return any(attempt > attempt_of(record) and step > start for attempt, start in resumed.items())


def sort_key(record: dict) -> tuple:
    kind = record["type"]
    step = step_of(record)
    if step is None:
        step = -1 if kind == "setup" else record.get("steps") if isinstance(record.get("steps"), int) else 1 << 40
    return (step, TYPE_ORDER.get(kind, 6), record.get("rank", -1), record.get("time", 0.0))


def merge(records: list[dict]) -> list[dict]:
    """One record per (type, rank, step), newest attempt first, older attempts cut at each resume, in
    step order: (step, type, rank); setup records first, a summary after its final step's records."""
    resumed = resume_steps(records)
    kept: dict[tuple, dict] = {}
    for record in records:
        if superseded(record, resumed):
            continue
        key = (record["type"], record.get("rank"), step_of(record))
        held = kept.get(key)
        if held is None or attempt_of(record) >= attempt_of(held):
            kept[key] = record
    return sorted(kept.values(), key=sort_key)


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def by_type(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["type"] == kind]
