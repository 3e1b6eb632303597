"""What `status` and `ls` show of a run before asking Slurm: its name, target, nodes, job id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.rundir.durable import read_json
from launcher.rundir.jobs import read_job_record
from launcher.rundir.layout import LOGS_DIR, PLAN_FILE


@dataclass
class RunInfo:
    run_dir: Path
    name: str
    target: str
    nodes: int | None
    job_id: str | None
    point: dict | None
    submitted: bool
    task_job_id: str | None = None  # an array task's own SLURM_JOB_ID (from its logs/slurm-ID.out)


def run_info(run_dir: Path) -> RunInfo:
    plan = read_json(run_dir / PLAN_FILE) or {}
    job = read_job_record(run_dir)
    return RunInfo(
        run_dir=run_dir,
        name=str(plan.get("name", run_dir.name)),
        target=str(plan.get("target", "?")),
        nodes=plan.get("nodes"),
        job_id=str(job["job_id"]) if job and job.get("job_id") else None,
        point=job.get("point") if job else None,
        submitted=job is not None,
        task_job_id=_task_job_id(run_dir) if job and job.get("array_job_id") else None,
    )


def _task_job_id(run_dir: Path) -> str | None:
    logs = sorted((run_dir / LOGS_DIR).glob("slurm-*.out"), key=lambda p: p.stat().st_mtime)
    ids = [p.stem.removeprefix("slurm-") for p in logs]
    ids = [i for i in ids if i.isdigit()]
    return ids[-1] if ids else None
