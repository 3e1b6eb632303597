"""Cancel a run's Slurm job (scancel). A sweep dir cancels the whole job array; one run of a sweep
cancels only its task."""

from __future__ import annotations

import argparse

from launcher.errors import UserError

HELP = "cancel a run's Slurm job (a sweep dir: the whole array)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", metavar="RUN", help="run dir, run name, or sweep dir")
    parser.add_argument("--output-dir", default="runs", help="where run names are looked up (default: runs)")


def run(args: argparse.Namespace) -> int:
    from launcher.rundir.find import resolve_run
    from launcher.rundir.jobs import read_job_record
    from launcher.submit.slurm import cancel_job, job_states

    target = resolve_run(args.run_name, args.output_dir)
    record = read_job_record(target)
    if not record or not record.get("job_id"):
        raise UserError(f"{target}: no Slurm job recorded (a --local or --dry-run run): nothing to cancel")
    job_id = str(record["job_id"])
    state = job_states([job_id]).states[job_id]
    if state.final:
        print(f"job {job_id} already ended ({state.describe()}): nothing to cancel")
        return 0
    cancel_job(job_id)
    print(f"cancelled job {job_id} ({target})")
    return 0
