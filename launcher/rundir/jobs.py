"""RUN/job.json: how a run was dispatched. A Slurm job (its id; an array task's id is
"<array job>_<index>"), or a local supervisor (its pid). A run dir without one was never
launched (a dry run)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from launcher.processes import process_start_time
from launcher.rundir.durable import read_json, write_json
from launcher.rundir.layout import JOB_FILE


def array_task_id(array_job_id: str, index: int) -> str:
    """Slurm's name for task `index` of job array `array_job_id` (squeue -r, scancel, sacct)."""
    return f"{array_job_id}_{index}"


def slurm_job_record(job_id: str, cluster: str | None, command: list[str], script: str | Path, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "cluster": cluster,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "script": str(script),
        **extra,
    }


def local_job_record(attempt: int, node_pids: list[int]) -> dict:
    """A --local run: the supervising `ftlaunch submit` process (what `ftlaunch cancel` signals) and its
    node agents, each with its start time (a pid alone may name another process by the time it is read)."""
    return {
        "target": "local",
        "supervisor": {"pid": os.getpid(), "started": process_start_time(os.getpid())},
        "agents": [{"pid": pid, "started": process_start_time(pid)} for pid in node_pids],
        "started": time.time(),
        "attempt": attempt,
    }


ATTEMPT_BASE_ENV = "FTL_ATTEMPT_BASE"  # set by `submit --resume`: attempts that ran before this submission


def current_attempt(environ: dict | None = None) -> int:
    """0 on a run's first start, +1 per `submit --resume` and per Slurm requeue."""
    env = os.environ if environ is None else environ
    return int(env.get(ATTEMPT_BASE_ENV) or 0) + int(env.get("SLURM_RESTART_COUNT") or 0)


def write_job_record(run_dir: str | Path, record: dict) -> None:
    write_json(Path(run_dir) / JOB_FILE, record)


def read_job_record(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / JOB_FILE)
