"""Cancel a run. A Slurm run: scancel (a sweep dir cancels the whole job array; one run of a sweep
only its task). A local run: its `ftlaunch submit --local` is asked to stop, as Ctrl-C would: the
ranks finish the step, write a checkpoint and stop (resume with `ftlaunch submit --resume RUN
--local`); --now stops them at once."""

from __future__ import annotations

import argparse
import os
import signal

from launcher.errors import UserError

HELP = "stop a run: its Slurm job (a sweep dir: the whole array), or a local run (checkpoint, then stop)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_name", metavar="RUN", help="run dir, run name, or sweep dir")
    parser.add_argument("--now", action="store_true", help="stop at once, without a final checkpoint")
    parser.add_argument("--output-dir", default="runs", help="where run names are looked up (default: runs)")


def run(args: argparse.Namespace) -> int:
    from launcher.rundir.find import resolve_run
    from launcher.rundir.jobs import read_job_record

    target = resolve_run(args.run_name, args.output_dir)
    record = read_job_record(target)
    if record and record.get("target") == "local":
        return _cancel_local(target, record, args.now)
    if not record or not record.get("job_id"):
        raise UserError(f"{target}: never launched (a --dry-run run dir): nothing to cancel")
    from launcher.submit.slurm import cancel_job, job_states

    job_id = str(record["job_id"])
    state = job_states([job_id]).states[job_id]
    if state.final:
        print(f"job {job_id} already ended ({state.describe()}): nothing to cancel")
        return 0
    cancel_job(job_id, now=args.now)
    print(f"cancelled job {job_id} ({target})")
    return 0


def _cancel_local(target, record: dict, now: bool) -> int:
    """Signal the supervisor (SIGTERM: graceful; SIGQUIT: now); if it is gone, its node agents
    (SIGTERM: graceful; SIGINT: now). Only processes whose pid and start time match the record."""
    from launcher.processes import same_process

    supervisor = record.get("supervisor") or {}
    if same_process(supervisor.get("pid"), supervisor.get("started")):
        os.kill(supervisor["pid"], signal.SIGQUIT if now else signal.SIGTERM)
        pids = [supervisor["pid"]]
    else:
        pids = [a["pid"] for a in record.get("agents", []) if same_process(a.get("pid"), a.get("started"))]
        for pid in pids:
            os.kill(pid, signal.SIGINT if now else signal.SIGTERM)
    if not pids:
        print(f"{target}: not running (its processes have ended): nothing to cancel")
        return 0
    how = "stopping now" if now else "the ranks finish the step, write a checkpoint and stop"
    print(f"cancelled local run {target} ({how}); continue it with: ftlaunch submit --resume {target} --local")
    return 0
