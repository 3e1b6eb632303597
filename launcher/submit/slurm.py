"""Talking to Slurm: sbatch, squeue/sacct, scancel. Nothing here reads or writes run-dir files
(launcher.rundir does).

Everything here shells out to the Slurm client commands of the login node. Job states come from
`squeue` first (it also knows jobs that ended less than MinJobAge ago), then `sacct`; where
accounting is off (`sacct` answers "Slurm accounting storage is disabled"), from the job
completion log (`sacct -c`), and where that knows nothing either, the caller says so and shows
what the run dir's node status files know. Their `|`-separated output is parsed here
(`parse_table`, which also expands array ranges such as `12_[0-3]`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launcher.errors import UserError

ACCOUNTING_DISABLED = "accounting storage is disabled"

# States in which a job may still run (everything else is final).
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT",
})  # fmt: skip
QUERY_TIMEOUT_S = 30


# ----------------------------------------------------------------------------------- submit


NO_SBATCH = (
    "sbatch not found on PATH: run ftlaunch on a Slurm login node, or use --local (run on this host) "
    "or --dry-run (render only)"
)


def require_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(NO_SBATCH.replace("sbatch", name, 1))
    return path


def sbatch_command(script: str | Path) -> list[str]:
    """Exactly what `submit` runs (and what --dry-run prints)."""
    return ["sbatch", "--parsable", str(script)]


@dataclass(frozen=True)
class Submitted:
    job_id: str  # as sbatch printed it (no cluster suffix)
    cluster: str | None
    command: list[str]


def submit_script(script: str | Path, extra_env: dict[str, str] | None = None) -> Submitted:
    """sbatch the script; `extra_env` reaches the job through sbatch's default --export=ALL."""
    require_command("sbatch")
    command = sbatch_command(script)
    env = {**os.environ, **extra_env} if extra_env else None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"sbatch did not answer within 120 s (is slurmctld up?): {' '.join(command)}") from None
    if result.returncode != 0:
        said = [re.sub(r"^sbatch: error: ", "", line.strip()) for line in (result.stderr or result.stdout).splitlines()]
        raise UserError(f"sbatch refused the job: {'; '.join(line for line in said if line)[:500] or result.returncode}")
    # --parsable: "<job id>[;<cluster>]"
    text = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    job_id, _, cluster = text.partition(";")
    if not job_id.isdigit():
        raise UserError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
    return Submitted(job_id, cluster or None, command)


# ----------------------------------------------------------------------------------- states


@dataclass
class JobState:
    job_id: str
    state: str | None  # RUNNING, COMPLETED, FAILED, CANCELLED, ... None: unknown
    source: str = ""  # squeue | sacct | sacct -c (job completion log)
    nodes: str = ""
    exit_code: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.state is None or self.state in ACTIVE_STATES

    @property
    def final(self) -> bool:
        return self.state is not None and self.state not in ACTIVE_STATES

    def describe(self) -> str:
        if self.state is None:
            return "unknown"
        text = self.state
        if self.exit_code and self.exit_code not in ("0:0",):
            text += f" (exit {self.exit_code})"
        if self.state == "PENDING" and self.reason and self.reason != "None":
            text += f" ({self.reason})"
        if self.nodes and self.nodes not in ("None assigned", "(null)"):
            text += f" on {self.nodes}"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StateReport:
    states: dict[str, JobState]
    notes: list[str] = field(default_factory=list)
    accounting_off: bool = False


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"{command[0]}: no answer within {QUERY_TIMEOUT_S} s")


_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")


def expand_job_ids(text: str) -> list[str]:
    """sacct's and squeue's names for jobs: "12", "12_3", or a pending array's "12_[0-3,7%2]"
    (indexes 0, 1, 2, 3, 7; "%2" is the array's throttle) -> one id per task."""
    text = text.strip()
    match = _ARRAY_RANGE.match(text)
    if not match:
        return [text] if text else []
    base, spec = match.groups()
    ids = []
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            ids += [f"{base}_{index}" for index in range(int(low), int(high or low) + 1)]
    return ids


def parse_table(header: str, text: str) -> dict[str, dict[str, str]]:
    """`|`-separated rows (sacct -P, squeue -o/-O) -> {job id: {column: value}}; `header` names the
    columns where the output has no header line (squeue -h). The first column is the job id."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return {}
    names = header.split("|")
    if lines[0].split("|")[0] == names[0]:  # sacct prints its own header
        names, lines = lines[0].split("|"), lines[1:]
    rows: dict[str, dict[str, str]] = {}
    for line in lines:
        row = dict(zip(names, (cell.strip() for cell in line.split("|"))))
        for job_id in expand_job_ids(row.get(names[0], "")):
            rows[job_id] = row
    return rows


def _state_word(raw: str) -> str | None:
    word = raw.split()[0].rstrip("+") if raw.strip() else ""
    return word.upper() or None


def _wait_status(raw: str) -> str:
    """squeue's exit_code is a wait status (768 = exit 3); sacct writes it as EXIT:SIGNAL."""
    if not raw.strip().isdigit():
        return ""
    value = int(raw)
    return f"{value >> 8}:{value & 0x7F}"


def job_states(job_ids: list[str], aliases: dict[str, str] | None = None) -> StateReport:
    """State of each job id ("12" or an array task "12_3"), squeue first, then sacct (or sacct -c).

    aliases: array task -> its own job id (SLURM_JOB_ID of the task), for the job completion log,
    which lists array tasks only under that id."""
    report = StateReport({})
    wanted = [j for j in dict.fromkeys(job_ids) if j]
    if not wanted:
        return report
    if shutil.which("squeue") is None:
        report.notes.append("squeue not found on PATH: job states are known only on a Slurm login node")
        report.states = {j: JobState(j, None) for j in wanted}
        return report
    base_ids = ",".join(sorted({j.split("_")[0] for j in wanted}, key=int))
    # -O: also the exit code (raw wait status) of jobs that ended less than MinJobAge ago
    queue = _run(
        ["squeue", "-h", "-r", "-t", "all", "-j", base_ids, "-O", "JobArrayID:|,State:|,NodeList:|,Reason:|,exit_code:"]
    )
    if queue.returncode != 0 and "job id" not in queue.stderr.lower():  # an older squeue without exit_code
        queue = _run(["squeue", "-h", "-r", "-t", "all", "-j", base_ids, "-o", "%i|%T|%N|%r"])
    # An id squeue no longer knows makes it fail ("Invalid job id specified") only when none is known.
    rows = parse_table("JobID|State|NodeList|Reason|ExitCode", queue.stdout) if queue.returncode == 0 else {}
    for job_id in wanted:
        row = rows.get(job_id)
        if row:
            state = _state_word(row.get("State", ""))
            exit_code = _wait_status(row.get("ExitCode", "")) if state and state not in ACTIVE_STATES else ""
            report.states[job_id] = JobState(
                job_id, state, "squeue", row.get("NodeList", ""), exit_code, row.get("Reason", "")
            )
    missing = [j for j in wanted if j not in report.states]
    if missing:
        _from_sacct(missing, report, aliases or {})
    for job_id in wanted:
        report.states.setdefault(job_id, JobState(job_id, None))
    return report


def _from_sacct(job_ids: list[str], report: StateReport, aliases: dict[str, str] | None = None) -> None:
    aliases = {j: a for j, a in (aliases or {}).items() if j in job_ids and a.isdigit()}
    if shutil.which("sacct") is None:
        report.notes.append("sacct not found on PATH: finished jobs' states are unknown")
        return
    fields = "JobID,State,ExitCode,NodeList"
    ids = ",".join(sorted({j.split("_")[0] for j in job_ids} | set(aliases.values()), key=int))
    acct = _run(["sacct", "-X", "-P", "-j", ids, "-o", fields])
    source = "sacct"
    if acct.returncode != 0 and ACCOUNTING_DISABLED in (acct.stderr + acct.stdout):
        report.accounting_off = True
        acct = _run(["sacct", "-c", "-P", "-j", ids, "-o", fields])
        source = "sacct -c (job completion log)"
    if acct.returncode != 0:
        message = (acct.stderr or acct.stdout).strip().splitlines()
        report.notes.append(f"{source} failed: {message[-1] if message else acct.returncode}")
        return
    rows = parse_table(fields.replace(",", "|"), acct.stdout)
    for job_id in job_ids:
        row = rows.get(job_id) or (rows.get(aliases[job_id]) if job_id in aliases else None)
        state = _state_word(row.get("State", "")) if row else None
        if state:
            report.states[job_id] = JobState(job_id, state, source, row.get("NodeList", ""), row.get("ExitCode", ""))
    unknown = [j for j in job_ids if j not in report.states]
    if report.accounting_off:
        report.notes.append(
            "Slurm accounting is off on this cluster (sacct: Slurm accounting storage is disabled): "
            "finished jobs are known only from the job completion log (sacct -c)"
            + (f", which does not list job(s) {', '.join(unknown)}: see the node status files" if unknown else "")
        )
    elif unknown:
        report.notes.append(f"sacct does not know job(s) {', '.join(unknown)}")


def cancel_job(job_id: str, now: bool = False) -> None:
    """scancel: Slurm sends SIGTERM to every step (the node agents then checkpoint and stop if they
    can within the cluster's KillWait), then SIGKILL. now: SIGKILL at once."""
    require_command("scancel")
    result = _run(["scancel", *(["--signal=KILL"] if now else []), job_id])
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise UserError(*(lines or [f"scancel {job_id} failed (exit {result.returncode})"]))


def run_states(infos: list) -> StateReport:
    """job_states for runs (launcher.rundir.info.RunInfo; array tasks also under their own job id,
    for the job completion log)."""
    aliases = {i.job_id: i.task_job_id for i in infos if i.job_id and i.task_job_id}
    return job_states([i.job_id for i in infos if i.job_id], aliases)
