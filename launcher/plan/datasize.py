"""Row counts of local data files, cheaply (no `datasets` import), so the plan can give step counts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from launcher.recipe.rules import file_format
from launcher.recipe.schema import Recipe


def split_rows(recipe: Recipe) -> dict[str, int]:
    """Rows per split for local files, after max_*_samples caps. Hub datasets: {} (known at run time)."""
    data = recipe.data
    if data is None or not data.files:  # no data section: the user's own script reads its data
        return {}
    counts: dict[str, int] = {}
    caps = {data.train_split: data.max_train_samples, data.eval_split: data.max_eval_samples}
    for split, path in data.files.items():
        fmt = file_format(path, data.format)
        rows = count_rows(Path(path), fmt) if fmt else None
        if rows is None:
            continue
        cap = caps.get(split)
        counts[split] = min(rows, cap) if cap else rows
    return counts


def count_rows(path: Path, fmt: str) -> int | None:
    try:
        if fmt == "json":
            return _json_rows(path)
        if fmt in ("csv", "tsv"):
            return _delimited_rows(path, "\t" if fmt == "tsv" else ",")
        if fmt == "parquet":
            import pyarrow.parquet as pq  # only for parquet: pyarrow is slow to import

            return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError, csv.Error):  # unreadable or malformed: the count is left to run time
        return None
    return None


def _json_rows(path: Path) -> int | None:
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):  # one JSON array
        return len(json.loads(path.read_bytes()))
    if head.startswith(b"{") and path.suffix.lower() == ".json":
        # either JSON Lines in a .json file or one object holding the rows under a field
        with path.open("rb") as handle:
            lines = [line for line in handle if line.strip()]
        if len(lines) > 1:
            return len(lines)
        return None
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _delimited_rows(path: Path, delimiter: str) -> int:
    # MSR-style TSV is read unquoted (quoting=3), as `datasets` is told to; a quoted CSV may span lines.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8") as handle:
        rows = sum(1 for row in csv.reader(handle, delimiter=delimiter, quoting=quoting) if row)
    return max(rows - 1, 0)  # header
