"""The user's own training script (recipe `entrypoint`): the run dir keeps the copy that runs.

`RUN/script/NAME.py` is a byte-for-byte copy taken at submit time, and every node launches that copy,
so editing the original afterwards changes neither a queued job nor the record of what ran.
`RUN/script/manifest.json` says where it came from and its sha256. Only the script file is copied:
modules it imports from its own directory are found there (the node agent puts that directory on
PYTHONPATH), and it runs in the directory `ftlaunch submit` ran in, like `accelerate launch train.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

from launcher.errors import UserError
from launcher.plan import Plan

MANIFEST = "script/manifest.json"


def script_files(plan: Plan) -> dict[str, str | bytes]:
    """Run-dir files for a script run ({} for the built-in trainer): the copy and its manifest."""
    if plan.entrypoint is None:
        return {}
    source = Path(plan.entrypoint["source"])
    try:
        content = source.read_bytes()
    except OSError as exc:
        raise UserError(f"entrypoint.script: cannot read {source} ({exc.strerror})") from None
    copy = os.path.relpath(plan.entrypoint["script"], plan.run_dir)
    manifest = {
        "source": str(source),
        "copy": copy,
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
        "args": plan.entrypoint["args"],
        "submitted_from": os.getcwd(),  # the script's working directory on every node (local runs and sbatch)
        "pythonpath": [str(source.parent)],  # imports of modules beside the original script
        "command": "accelerate launch --config_file accelerate.yaml ... " + shlex.join([copy, *plan.entrypoint["args"]]),
    }
    return {copy: content, MANIFEST: json.dumps(manifest, indent=2) + "\n"}

