"""The one way a run-dir file is written: never half a file, and still there after a power cut.

Readers on other nodes (shared filesystem), a resumed job after a crash, and `ftlaunch collect`
all read these files; each write goes to a temporary file in the same directory, is fsynced,
renamed over the target, and the directory entry is fsynced too. A crash leaves either the old
file or the new one, never a mix, and never an empty file under the real name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def write_durable(path: Path, content: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode("utf-8") if isinstance(content, str) else content
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, payload: dict) -> None:
    write_durable(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: Path) -> dict | None:
    """The object in `path`, or None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below `root` (bottom-up), e.g. a checkpoint before it is published."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
