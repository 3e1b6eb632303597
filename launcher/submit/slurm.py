"""Talking to Slurm: sbatch, squeue/sacct, scancel. Nothing here reads or writes run-dir files
(launcher.rundir does).

Everything here shells out to the Slurm client commands of the login node. Job states come from
`squeue` first (it also knows jobs that ended less than MinJobAge ago), then `sacct`; where
accounting is off (`sacct` answers "Slurm accounting storage is disabled"), from the job
completion log (`sacct -c`), and where that knows nothing either, the caller says so and shows
what the run dir's node status files know. Their `|`-separated output is parsed here
(`parse_table`, which also expands array ranges such as `12_[0-3]`), and so is the one `sinfo`
query a submit makes about the partitions (`parse_partitions`).
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


# ----------------------------------------------------------------------------------- partitions

# The one query a submit makes about the cluster: per partition and node configuration (sinfo prints
# one line per group of alike nodes), the name (`*` marks the default partition), availability,
# MaxTime, node count, CPUs and memory (MB) per node, GRES and the job size limit in nodes.
PARTITION_FORMAT = "%P|%a|%l|%D|%c|%m|%G|%s"
PARTITION_QUERY = ["sinfo", "-h", "-o", PARTITION_FORMAT]
_NO_LIMIT = frozenset({"infinite", "unlimited", "n/a", "none", ""})


@dataclass(frozen=True)
class NodeGroup:
    """Nodes of a partition that sinfo describes on one line."""

    count: int
    cpus: int | None  # per node (sinfo writes "N+" when they differ: the fewest)
    memory_mb: int | None
    gpus: int  # GRES gpu per node
    gpu_type: str | None  # "a100" from gpu:a100:8; None when the GRES has no type


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    state: str  # up, down, drain, inact
    max_time: str  # as sinfo prints it ("infinite", "1:00:00", "1-12:00:00")
    max_time_s: int | None  # None: no limit
    max_job_nodes: int | None  # nodes one job may have (MaxNodes); None: no limit
    groups: tuple[NodeGroup, ...]

    @property
    def nodes(self) -> int:
        return sum(group.count for group in self.groups)

    @property
    def max_gpus(self) -> int:
        return max((group.gpus for group in self.groups), default=0)

    def largest(self, attribute: str) -> int | None:
        values = [getattr(group, attribute) for group in self.groups if getattr(group, attribute) is not None]
        return max(values) if values else None

    def fitting(self, gpus: int = 0, cpus: int | None = None, memory_mb: int | None = None) -> list[NodeGroup]:
        """The node groups on which one task with this many GPUs, CPUs and memory fits."""
        return [
            group for group in self.groups
            if group.gpus >= gpus and (cpus is None or group.cpus is None or group.cpus >= cpus)
            and (memory_mb is None or group.memory_mb is None or group.memory_mb >= memory_mb)
        ]  # fmt: skip

    def gpu_text(self) -> str:
        """"8x a100", "2x gpu" (untyped GRES), "8x a100, 4x v100" (mixed nodes), or "no GPUs"."""
        kinds = dict.fromkeys(f"{g.gpus}x {g.gpu_type or 'gpu'}" for g in self.groups if g.gpus)
        return ", ".join(kinds) or "no GPUs"

    def describe(self) -> str:
        return f"{self.name} ({self.gpu_text()}{', default' if self.default else ''})"


def parse_partitions(text: str) -> list[Partition] | None:
    """sinfo -h -o PARTITION_FORMAT -> partitions, in sinfo's order; None when the text is not that."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) != PARTITION_FORMAT.count("|") + 1 or not _leading_int(cells[3]):
            return None
        rows.setdefault(cells[0], []).append(cells)
    partitions = []
    for raw_name, lines in rows.items():
        _, state, max_time, _, _, _, _, size = lines[0]
        groups = tuple(
            NodeGroup(_leading_int(count) or 0, _leading_int(cpus), _leading_int(memory), *_gres_gpus(gres))
            for _, _, _, count, cpus, memory, gres, _ in lines
        )  # fmt: skip
        upper = size.rpartition("-")[2]
        partitions.append(Partition(
            name=raw_name.rstrip("*"), default=raw_name.endswith("*"), state=state.rstrip("*"), max_time=max_time,
            max_time_s=time_seconds(max_time), max_job_nodes=None if upper.lower() in _NO_LIMIT else _leading_int(upper),
            groups=groups,
        ))  # fmt: skip
    return partitions if partitions else None


def find_partition(partitions: list[Partition], name: str | None) -> Partition | None:
    """The partition called `name`, or the default partition when `name` is None."""
    return next((p for p in partitions if (p.name == name if name else p.default)), None)


def _leading_int(text: str) -> int | None:
    match = re.match(r"\d+", text)
    return int(match.group()) if match else None


def _gres_gpus(gres: str) -> tuple[int, str | None]:
    """sinfo's %G ("gpu:a100:8(S:0-1),nvme:1", "gpu:2", "(null)") -> (GPUs per node, type)."""
    count, types = 0, []
    for item in re.split(r",(?![^(]*\))", gres):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        count += _leading_int(parts[-1]) or 0
        if len(parts) > 2:
            types.append(parts[1])
    return count, "/".join(dict.fromkeys(types)) or None


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_seconds(text: str) -> int | None:
    """A Slurm time ("90", "30:00", "4:00:00", "2-12", "1-12:00:00") in seconds; None for no limit
    (infinite, UNLIMITED) or text that is not a time."""
    if text.strip().lower() in _NO_LIMIT:
        return None
    match = _TIME.match(text.strip())
    if not match:
        return None
    days, first, second, third = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if third is not None:  # H:M:S
        return (int(first) * 60 + int(second)) * 60 + int(third)
    if second is not None:  # M:S
        return int(first) * 60 + int(second)
    return int(first) * 60  # minutes


_MEMORY_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def memory_mb(text: str) -> int | None:
    """Slurm's --mem ("64G", "500M", "64000": megabytes) in MB; None for 0 (all of a node's memory) or
    text that is not a size."""
    match = re.match(r"^(\d+)([KMGT]?)B?$", text.strip().upper())
    if not match or int(match.group(1)) == 0:
        return None
    return int(int(match.group(1)) * _MEMORY_UNITS[match.group(2) or "M"])
