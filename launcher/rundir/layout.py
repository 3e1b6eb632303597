"""Where everything lives in a run directory. Every module that reads or writes a run-dir file
takes the name from here.

    RUN/recipe.yaml  plan.json  accelerate.yaml  [deepspeed.json]  [sbatch.sh]  env.json
        job.json                 how the run was dispatched (Slurm job id, or the local supervisor)
        status/node-N.json       each node agent: joining -> running -> done | failed | stopped
        status/rank-R.json       each rank: running -> done | failed | stopped
        status/requeue           written by rank 0 after a checkpoint on a stop request
        plans/before-attempt-N.json   the plan of the attempts before N, when attempt N moved the run
        metrics/rank-R.jsonl     every rank's records
        logs/node-N.log          everything node N printed (logs/slurm-JOB.out: the batch script)
        checkpoints/step-NNNNNNNN/   manifest.json, state/, hf/
        results.json  model/     written once training finished
        report.json  report.md  curves.png  metrics.jsonl   the collected report
"""

from __future__ import annotations

from pathlib import Path

RECIPE_FILE = "recipe.yaml"
PLAN_FILE = "plan.json"
ENV_FILE = "env.json"
JOB_FILE = "job.json"
SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
STATUS_DIR = "status"
METRICS_DIR = "metrics"
LOGS_DIR = "logs"
REQUEUE_MARKER = f"{STATUS_DIR}/requeue"  # the batch script requeues the job when it finds this
PLANS_DIR = "plans"  # a run moved to another layout keeps its earlier plans here (before-attempt-N.json)
REPORT_FILES = ("report.json", "report.md", "curves.png", "metrics.jsonl")


def status_path(run_dir: str | Path, kind: str, index: int) -> Path:
    """RUN/status/node-N.json (kind "node") or RUN/status/rank-R.json (kind "rank")."""
    return Path(run_dir) / STATUS_DIR / f"{kind}-{index}.json"


def metrics_path(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / METRICS_DIR / f"rank-{rank}.jsonl"


def node_log_path(run_dir: str | Path, node: int) -> Path:
    return Path(run_dir) / LOGS_DIR / f"node-{node}.log"
