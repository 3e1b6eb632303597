"""Slurm dispatch and job control: sbatch, the job record in the run dir, squeue/sacct/scancel.

Everything here shells out to the Slurm client commands of the login node. Job states come from
`squeue` first (it also knows jobs that ended less than MinJobAge ago), then `sacct`; where
accounting is off (`sacct` answers "Slurm accounting storage is disabled"), from the job
completion log (`sacct -c`), and where that knows nothing either, the caller says so and shows
what the run dir's node status files know. sacct/squeue output is parsed by submitit's
SlurmInfoWatcher.read_info (it also expands array ranges such as `12_[0-3]`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launcher.jsonfiles import read_json  # noqa: F401  (re-exported for callers)
from launcher.errors import UserError

JOB_FILE = "job.json"
SWEEP_FILE = "sweep.json"
PLAN_FILE = "plan.json"
DEFAULT_OUTPUT_DIR = "runs"
ACCOUNTING_DISABLED = "accounting storage is disabled"

# States in which a job may still run (everything else is final).
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
    "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT",
})  # fmt: skip
QUERY_TIMEOUT_S = 30


# ----------------------------------------------------------------------------------- submit


def require_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(
            f"{name} not found on PATH: run ftlaunch on a Slurm login node, "
            "or use --local (run on this host) or --dry-run (render only)"
        )
    return path


def sbatch_command(script: str | Path) -> list[str]:
    """Exactly what `submit` runs (and what --dry-run prints)."""
    return ["sbatch", "--parsable", str(script)]


@dataclass(frozen=True)
class Submitted:
    job_id: str  # as sbatch printed it (no cluster suffix)
    cluster: str | None
    command: list[str]


def submit_script(script: str | Path) -> Submitted:
    require_command("sbatch")
    command = sbatch_command(script)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise UserError(f"sbatch did not answer within 120 s (is slurmctld up?): {' '.join(command)}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise UserError(*(["sbatch refused the job (the run dir is kept: " + str(script) + ")"] + lines[:5]))
    # --parsable: "<job id>[;<cluster>]"
    text = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    job_id, _, cluster = text.partition(";")
    if not job_id.isdigit():
        raise UserError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
    return Submitted(job_id, cluster or None, command)


def job_record(submitted: Submitted, script: str | Path, **extra: object) -> dict:
    return {
        "job_id": submitted.job_id,
        "cluster": submitted.cluster,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": submitted.command,
        "script": str(script),
        **extra,
    }


def write_job_record(run_dir: str | Path, record: dict) -> None:
    path = Path(run_dir) / JOB_FILE
    tmp = path.with_name(f".{JOB_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_job_record(run_dir: str | Path) -> dict | None:
    return read_json(Path(run_dir) / JOB_FILE)


# ----------------------------------------------------------------------------------- runs


def is_run_dir(path: Path) -> bool:
    return (path / PLAN_FILE).is_file()


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file()


def iter_runs(output_dir: str | Path) -> list[Path]:
    """Run dirs under output_dir (a sweep's runs are inside its sweep dir), newest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        if is_run_dir(child):
            found.append(child)
        elif is_sweep_dir(child):
            found += [g for g in child.iterdir() if g.is_dir() and is_run_dir(g)]
    return sorted(found, key=created_at, reverse=True)


def created_at(run_dir: Path) -> float:
    try:
        return (run_dir / PLAN_FILE).stat().st_mtime
    except OSError:
        return 0.0


def resolve_run(arg: str | None, output_dir: str | Path = DEFAULT_OUTPUT_DIR, allow_sweep: bool = True) -> Path:
    """RUN as a run dir path, a run (or sweep) name under output_dir, or None: the newest run."""
    root = Path(output_dir)
    if arg is None:
        runs = iter_runs(root)
        if not runs:
            raise UserError(f"no runs under {root}/: pass RUN (a run dir) or --output-dir")
        return runs[0]
    for candidate in (Path(arg), root / arg):
        if candidate.is_dir() and (is_run_dir(candidate) or (allow_sweep and is_sweep_dir(candidate))):
            return candidate
    if Path(arg).is_dir() or (root / arg).is_dir():
        raise UserError(f"{arg}: not an ftlaunch run dir (no {PLAN_FILE})")
    names = [r for r in iter_runs(root) if r.name == arg or r.name.startswith(arg)]
    if len(names) == 1:
        return names[0]
    if len(names) > 1:
        raise UserError(f"run {arg!r} matches {len(names)} runs under {root}/: " + ", ".join(r.name for r in names[:5]))
    raise UserError(f"run {arg!r}: no such run dir, and no run of that name under {root}/ (see ftlaunch ls)")


def sweep_runs(sweep_dir: Path) -> list[Path]:
    data = read_json(sweep_dir / SWEEP_FILE) or {}
    return [Path(entry["run_dir"]) for entry in data.get("runs", [])]


def node_status(run_dir: Path) -> dict[int, dict]:
    """RUN_DIR/status/node-R.json as written by each node agent (R -> its content)."""
    found = {}
    for path in sorted((run_dir / "status").glob("node-*.json")):
        rank = path.stem.removeprefix("node-")
        data = read_json(path)
        if rank.isdigit() and data is not None:
            found[int(rank)] = data
    return found


def describe_node_status(data: dict) -> str:
    keys = ("state", "status", "host", "ok", "exit_code", "returncode", "message", "error")
    shown = {k: data[k] for k in keys if k in data}
    return ", ".join(f"{k}={v}" for k, v in (shown or data).items())[:300]


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


def _parse_table(header: str, text: str) -> dict[str, dict[str, str]]:
    from submitit.slurm.slurm import SlurmInfoWatcher

    body = "\n".join(line for line in text.splitlines() if line.strip())
    if not body:
        return {}
    if not body.startswith(header.split("|")[0] + "|"):
        body = header + "\n" + body
    return SlurmInfoWatcher().read_info(body)


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
    rows = _parse_table("JobID|State|NodeList|Reason|ExitCode", queue.stdout) if queue.returncode == 0 else {}
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
    rows = _parse_table(fields.replace(",", "|"), acct.stdout)
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


def cancel_job(job_id: str) -> None:
    require_command("scancel")
    result = _run(["scancel", job_id])
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise UserError(*(lines or [f"scancel {job_id} failed (exit {result.returncode})"]))


# ----------------------------------------------------------------------------------- run state


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
    logs = sorted((run_dir / "logs").glob("slurm-*.out"), key=lambda p: p.stat().st_mtime)
    ids = [p.stem.removeprefix("slurm-") for p in logs]
    ids = [i for i in ids if i.isdigit()]
    return ids[-1] if ids else None


def run_states(infos: list[RunInfo]) -> StateReport:
    """job_states for runs (array tasks also under their own job id, for the job completion log)."""
    aliases = {i.job_id: i.task_job_id for i in infos if i.job_id and i.task_job_id}
    return job_states([i.job_id for i in infos if i.job_id], aliases)


FINAL_NODE_STATES = ("done", "failed")  # launcher.run.node writes joining -> running -> done | failed


def local_state(run_dir: Path, nodes: int | None) -> str:
    """What the node status files say, for runs with no Slurm job (local, or unknown to Slurm)."""
    status = node_status(run_dir)
    if not status:
        return "no status yet"
    failed = [r for r, d in status.items() if _failed(d)]
    if failed:
        return f"FAILED (node {', '.join(map(str, failed))})"
    states = {r: str(d.get("state", "?")) for r, d in status.items()}
    if (not nodes or len(status) >= nodes) and all(s == "done" for s in states.values()):
        return "COMPLETED (status files)"
    shown = ", ".join(f"node {r} {s}" for r, s in sorted(states.items()))
    missing = f", {nodes - len(status)} node(s) not reported" if nodes and len(status) < nodes else ""
    return f"{shown}{missing} (status files)"


def nodes_finished(run_dir: Path, nodes: int | None) -> bool:
    """Every node's status file says done, or one says failed."""
    status = node_status(run_dir)
    if any(_failed(d) for d in status.values()):
        return True
    return bool(nodes) and len(status) >= nodes and all(d.get("state") in FINAL_NODE_STATES for d in status.values())


def _failed(data: dict) -> bool:
    for key in ("exit_code", "returncode"):
        if isinstance(data.get(key), int) and data[key] != 0:
            return True
    state = str(data.get("state", data.get("status", ""))).lower()
    return state in ("failed", "error", "killed", "timeout") or data.get("ok") is False
