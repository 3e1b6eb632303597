"""Submitting to a Cloud TPU: which target a recipe goes to, and running its pod script.

The pod script (RUN/tpu_pod.sh, launcher.render.tpu_pod) does the gcloud work; this runs it with
the output on the terminal, then writes the report from the records every worker sent back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from launcher.errors import JobFailed
from launcher.render.tpu_pod import SCRIPT_NAME


NO_GCLOUD = (
    "gcloud not found on PATH: a TPU job is started with the Google Cloud CLI "
    "(install it and run gcloud auth login), or use --dry-run to render the pod script only"
)


def pod_command(run_dir: Path) -> list[str]:
    """Exactly what submit runs (and what --dry-run prints)."""
    return ["bash", str(run_dir / SCRIPT_NAME)]


def run_pod(run_dir: Path, console) -> int:
    result = subprocess.run(pod_command(run_dir))
    try:
        from launcher.collect import collect_run

        collect_run(run_dir, quiet=True)  # from every worker's records, not only worker 0's
        console.print(f"report: {run_dir / 'report.md'}", markup=False, highlight=False)
    except Exception as exc:  # noqa: BLE001 - the job's own outcome matters more than its report
        console.print(f"no report ({type(exc).__name__}: {exc}); run ftlaunch collect {run_dir}", markup=False)
    if result.returncode != 0:
        raise JobFailed(f"the TPU pod script exited with {result.returncode}: see {run_dir}/logs and status/",
                        exit_code=result.returncode)  # fmt: skip
    console.print(f"run dir: {run_dir}", markup=False, highlight=False)
    return 0
