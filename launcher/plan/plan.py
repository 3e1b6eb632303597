"""The plan: a pure function of the recipe and a few facts about where it runs.

Everything that is arithmetic (world size, effective batch, steps) or a decision (device,
rendezvous, the command each node runs) is made here, once, and written to plan.json. The
renderers, the node agent and the training entrypoint read it instead of deciding again, so
what the dry run prints is what runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from launcher.cpu import SLOW_BF16
from launcher.errors import UserError
from launcher.plan.elastic import accumulation_for
from launcher.plan.steps import Schedule, micro_batches_per_epoch, schedule
from launcher.plan import tpu as xla
from launcher.recipe.schema import Recipe

Target = Literal["local", "slurm", "tpu"]  # tpu: a Cloud TPU VM or pod slice, reached with gcloud

# Port pair (rendezvous, join check) from the Slurm job id: even ports only, so jobs with
# consecutive ids sharing a node never collide; below Linux's ephemeral range (32768+).
PORT_BASE = 12000
PORT_SLOTS = 10000


def port_for_job(job_id: int) -> int:
    return PORT_BASE + 2 * (job_id % PORT_SLOTS)


PORT_SHELL_EXPR = f"$(( {PORT_BASE} + 2 * (SLURM_JOB_ID % {PORT_SLOTS}) ))"


@dataclass(frozen=True)
class HostFacts:
    """What the caller found out about the submitting host (kept out of the pure function)."""

    gpus: int = 0  # CUDA GPUs visible here; only matters for local runs
    python: str = "python"  # interpreter every node runs (the submitting venv's, on a shared filesystem)
    cpu_bf16: bool | None = None  # native bf16 on this CPU (None: unknown); only matters for local CPU runs
    torch_xla: bool = False  # the interpreter has torch_xla (local XLA runs need it)
    tpu_chips: int = 0  # TPU chips on this host (local XLA runs on them, or on the CPU without)


@dataclass(frozen=True)
class Rendezvous:
    head: str  # address of node 0, or a shell expression evaluated inside the allocation
    head_rule: str
    port: int | None  # None: derived from the job id at run time
    port_rule: str
    join_timeout_s: int
    timeout_s: int


@dataclass(frozen=True)
class Plan:
    name: str
    target: Target
    run_dir: str
    device: Literal["cpu", "cuda", "xla"]
    nodes: int
    procs_per_node: int
    world_size: int
    gpus_per_node: int
    per_device_batch_size: int | None  # None (and the other Nones below): a user's script decides
    eval_batch_size: int | None
    gradient_accumulation_steps: int
    effective_batch_size: int | None
    train_rows: int | None
    eval_rows: int | None
    micro_batches_per_epoch: int | None  # per process
    steps_per_epoch: int | None  # optimizer steps
    epochs: int | None
    total_steps: int | None
    warmup_steps: int | None
    precision: str
    padding: str | None
    max_length: int | None
    pad_to_multiple_of: int | None
    backend: str
    zero_stage: int | None
    rendezvous: Rendezvous
    python: str
    node_command: list[str]  # with {machine_rank}, {head}, {port} placeholders
    launch_command: list[str]  # what the node agent runs on each node, same placeholders
    notes: list[str] = field(default_factory=list)
    # The user's own script (recipe `entrypoint`), or None for the built-in trainer:
    # {"script": RUN/script/NAME.py (the copy that runs), "source": the original, "args": [...]}.
    # Then what only the script knows (batch size, data rows, steps, padding) is None in this plan.
    entrypoint: dict | None = None
    # XLA (cluster.accelerator: tpu): where it runs and the fixed batch shapes (launcher.plan.tpu.xla_section).
    xla: dict | None = None
    # Slurm elastic range (cluster.min_nodes): the job may start on min_nodes..nodes; every node agent
    # re-plans for the nodes it got (launcher.plan.elastic), keeping the global batch.
    min_nodes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def schedule(self) -> Schedule:
        return Schedule(*(getattr(self, name) for name in Schedule.__dataclass_fields__))

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        data = dict(data)
        data["rendezvous"] = Rendezvous(**data["rendezvous"])
        return cls(**data)

    def node_argv(self, machine_rank: int, head: str | None = None, port: int | str | None = None) -> list[str]:
        return _fill(self.node_command, machine_rank, head or self.rendezvous.head, port or self.rendezvous.port)

    def launch_argv(self, machine_rank: int, head: str, port: int | str) -> list[str]:
        return _fill(self.launch_command, machine_rank, head, port)


def _fill(template: list[str], machine_rank: int | str, head: str, port: int | str | None) -> list[str]:
    values = {"{machine_rank}": str(machine_rank), "{head}": str(head), "{port}": str(port)}
    return [values.get(token, token) for token in template]


def make_plan(
    recipe: Recipe,
    target: Target,
    run_dir: str,
    host: HostFacts,
    split_rows: dict[str, int] | None = None,
    local_port: int | None = None,
) -> Plan:
    """Recipe + where it runs -> Plan. Raises UserError for combinations that cannot run."""
    cluster, train = recipe.cluster, recipe.train
    notes: list[str] = []
    placement = xla.xla_placement(recipe, target, host, notes) if cluster.accelerator == "tpu" else None
    if placement is not None:
        device, nodes, procs_per_node = "xla", placement.hosts, placement.devices_per_host
    else:
        device, procs_per_node = _placement(recipe, target, host, notes)
        nodes = cluster.nodes
    world = nodes * procs_per_node
    python = _interpreter(recipe, target, host)
    if recipe.entrypoint is None:
        work = _trainer_work(recipe, world, split_rows or {}, notes, drop_last=placement is not None)
        program = ["-m", "launcher.train", run_dir]
    else:
        work = _script_work(recipe, run_dir, device, notes)
        program = ["-m", "launcher.train.user_script", work["entrypoint"]["script"], *recipe.entrypoint.args]
    if placement is None:
        node_command, launch_command = _commands(python, run_dir, program)
        rendezvous = _rendezvous(recipe, target, local_port)
        xla_info = None
    else:
        node_command, launch_command = xla.xla_commands(python, run_dir)
        rendezvous = Rendezvous(**xla.xla_rendezvous(placement, recipe.distributed))
        xla_info = xla.xla_section(placement, recipe, world, work["train_rows"], work["eval_rows"],
                                   work["eval_batch_size"])  # fmt: skip
    per_device = work.pop("per_device_batch_size")
    return Plan(
        name=recipe.name,
        target=target,
        run_dir=run_dir,
        device=device,  # type: ignore[arg-type]  # "cpu" | "cuda" | "xla"
        nodes=nodes,
        procs_per_node=procs_per_node,
        world_size=world,
        gpus_per_node=cluster.gpus_per_node if device == "cuda" else 0,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        effective_batch_size=per_device * train.gradient_accumulation_steps * world if per_device else None,
        precision=train.precision,
        backend=recipe.distributed.backend,
        zero_stage=recipe.distributed.stage,
        rendezvous=rendezvous,
        python=python,
        node_command=node_command,
        launch_command=launch_command,
        notes=notes,
        xla=xla_info,
        min_nodes=_elastic_range(recipe, target, per_device, train.gradient_accumulation_steps, procs_per_node, notes),
        **work,
    )


def _elastic_range(recipe: Recipe, target: Target, per_device: int | None, accumulation: int, procs_per_node: int,
                   notes: list[str]) -> int | None:  # fmt: skip
    """cluster.min_nodes, checked: every node count of the range must keep the global batch."""
    cluster = recipe.cluster
    if cluster.min_nodes is None:
        return None
    if target != "slurm":
        raise UserError("cluster.min_nodes: an elastic node range is for Slurm jobs (--resume --nodes N moves a local run)")
    if cluster.min_nodes > cluster.nodes:
        raise UserError(f"cluster.min_nodes: {cluster.min_nodes} is more than cluster.nodes ({cluster.nodes})")
    if recipe.distributed.backend == "deepspeed" or recipe.entrypoint is not None or per_device is None:
        raise UserError("cluster.min_nodes: an elastic range needs the built-in trainer with ddp "
                        "(DeepSpeed ZeRO checkpoints are sharded per rank)")  # fmt: skip
    effective = per_device * accumulation * cluster.nodes * procs_per_node
    steps = []
    for nodes in range(cluster.min_nodes, cluster.nodes + 1):
        needed = accumulation_for(effective, per_device, nodes * procs_per_node, "cluster.min_nodes")
        steps.append(f"{nodes} node(s): accumulation {needed}")
    notes.append(f"elastic: {cluster.min_nodes}-{cluster.nodes} nodes, global batch {effective} kept ({'; '.join(steps)})")
    return cluster.min_nodes


def _trainer_work(recipe: Recipe, world: int, split_rows: dict[str, int], notes: list[str], drop_last: bool) -> dict:
    """What the built-in trainer will do: batches, data rows, steps, padding. drop_last (XLA): every
    batch has one shape, the ragged last one of an epoch is dropped."""
    train, data = recipe.train, recipe.data
    assert data is not None  # the schema requires it without an entrypoint
    train_rows = split_rows.get(data.train_split)
    eval_rows = split_rows.get(data.eval_split) if data.eval_split else None
    if train_rows == 0:
        raise UserError(f"data.files.{data.train_split}: the training split is empty")
    micro = None
    if train_rows and drop_last:
        micro = xla.micro_batches(train_rows, world, train.per_device_batch_size)
        if micro == 0:
            raise UserError(f"data.files.{data.train_split}: {train_rows} training rows do not fill one batch of "
                            f"{train.per_device_batch_size} on each of {world} XLA devices")  # fmt: skip
    elif train_rows:
        micro = micro_batches_per_epoch(train_rows, world, train.per_device_batch_size)
    steps = schedule(micro, train.gradient_accumulation_steps, train)
    if train.save_strategy == "steps" and steps.total_steps and train.save_steps and train.save_steps > steps.total_steps:
        notes.append(f"save_steps {train.save_steps} > total steps {steps.total_steps}: only the final model is saved")
    return {
        "per_device_batch_size": train.per_device_batch_size,
        "eval_batch_size": train.eval_batch_size or 2 * train.per_device_batch_size,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        **asdict(steps),
        "padding": data.padding,
        "max_length": data.max_length,
        "pad_to_multiple_of": data.pad_to_multiple_of,
    }


SCRIPT_DIR = "script"  # RUN/script/NAME.py: the copy of the user's script that every node runs

# The train fields a script run uses (the others only the built-in trainer reads; a script run lists
# the ones the recipe sets as unused). DeepSpeed's JSON also takes the batch size and clipping.
_SCRIPT_USES_TRAIN = ("precision", "gradient_accumulation_steps")
_SCRIPT_USES_TRAIN_DEEPSPEED = (*_SCRIPT_USES_TRAIN, "per_device_batch_size", "max_grad_norm")


def script_copy_path(run_dir: str, source: str) -> str:
    return f"{run_dir}/{SCRIPT_DIR}/{source.rsplit('/', 1)[-1]}"


def _script_work(recipe: Recipe, run_dir: str, device: str, notes: list[str]) -> dict:
    """The user's own script: `accelerate launch` runs the run dir's copy of it instead of
    launcher.train; what only the script knows (batch size, data rows, steps, padding) stays None."""
    entry, train = recipe.entrypoint, recipe.train
    assert entry is not None
    deepspeed = recipe.distributed.backend == "deepspeed"
    used = _SCRIPT_USES_TRAIN_DEEPSPEED if deepspeed else _SCRIPT_USES_TRAIN
    unused = [name for name in ("model", "data") if getattr(recipe, name) is not None]
    unused += ["metrics"] if "metrics" in recipe.model_fields_set else []
    unused += [f"train.{name}" for name in sorted(train.model_fields_set) if name not in used]
    if "timeout_s" in recipe.distributed.model_fields_set:
        unused.append("distributed.timeout_s (pass InitProcessGroupKwargs(timeout=...) to Accelerator)")
    if unused:
        notes.append("not used by your script (the built-in trainer's settings): " + ", ".join(unused))
    if train.gradient_accumulation_steps > 1:
        notes.append(
            f"gradient accumulation {train.gradient_accumulation_steps}: ACCELERATE_GRADIENT_ACCUMULATION_STEPS, "
            "read by Accelerator(); it applies where the script uses accelerator.accumulate(model)"
        )
    per_device = None  # the script's own DataLoader decides
    if deepspeed:
        per_device = train.per_device_batch_size
        notes.append(
            f"DeepSpeed: train.per_device_batch_size ({per_device}) and train.max_grad_norm go into deepspeed.json; "
            "give your DataLoader the same batch size"
        )
        if device == "cpu":
            notes.append(
                "DeepSpeed on CPU: your script needs Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend='gloo')])"
            )
    script = script_copy_path(run_dir, entry.script)
    return {
        **_ONLY_THE_SCRIPT_KNOWS,
        "per_device_batch_size": per_device,
        "entrypoint": {"script": script, "source": entry.script, "args": list(entry.args)},
    }


_ONLY_THE_SCRIPT_KNOWS = dict.fromkeys(
    ("eval_batch_size", "train_rows", "eval_rows", "micro_batches_per_epoch", "steps_per_epoch", "epochs",
     "total_steps", "warmup_steps", "padding", "max_length", "pad_to_multiple_of")
)  # fmt: skip


def _interpreter(recipe: Recipe, target: Target, host: HostFacts) -> str:
    """Inside a container the image's interpreter runs, not the submitting host's venv; on a TPU VM its own."""
    return "python3" if (recipe.cluster.container and target == "slurm") or target == "tpu" else host.python


def _placement(recipe: Recipe, target: Target, host: HostFacts, notes: list[str]) -> tuple[str, int]:
    """(device, processes per node); UserError for combinations that cannot run."""
    cluster, train = recipe.cluster, recipe.train
    device = _device(recipe, target, host)
    if device == "cpu" and train.precision == "fp16":
        where = "this host has no CUDA GPU" if target == "local" else "cluster.gpus_per_node is 0"
        raise UserError(
            f"train.precision: fp16 needs a CUDA GPU ({where}); on CPU it would silently run fp32. Use bf16 or no"
        )
    if device == "cpu" and train.precision == "bf16":
        if target == "local" and host.cpu_bf16 is False:
            raise UserError(f"train.precision: {SLOW_BF16}")
        if target == "slurm":
            notes.append("bf16 on CPU nodes: every rank checks that its CPU has native bf16 (AVX512-BF16 or AMX) "
                         "and refuses to start without it")  # fmt: skip
    if device == "cuda":
        procs_per_node = cluster.procs_per_node or cluster.gpus_per_node
        if procs_per_node > cluster.gpus_per_node:
            raise UserError(
                f"cluster.procs_per_node: {procs_per_node} processes per node but {cluster.gpus_per_node} GPU(s) "
                "per node: one process per GPU"
            )
    else:
        procs_per_node = cluster.procs_per_node or 1
    if target == "local" and device == "cuda" and cluster.nodes * procs_per_node > host.gpus:
        raise UserError(
            f"cluster.nodes x procs_per_node = {cluster.nodes * procs_per_node} processes but this host has "
            f"{host.gpus} GPU(s): lower --nodes/--procs-per-node"
        )
    if target == "local" and device == "cpu" and cluster.gpus_per_node:
        notes.append("no CUDA GPU on this host: running on CPU (gloo)")
    return device, procs_per_node


def _commands(python: str, run_dir: str, program: list[str]) -> tuple[list[str], list[str]]:
    """(node agent command, accelerate launch command running `program`), with placeholders."""
    node = [python, "-m", "launcher.run.node", run_dir, "--machine-rank", "{machine_rank}",
            "--head", "{head}", "--port", "{port}"]  # fmt: skip
    launch = [
        python, "-m", "accelerate.commands.launch",
        "--config_file", f"{run_dir}/accelerate.yaml",
        "--machine_rank", "{machine_rank}",
        "--main_process_ip", "{head}",
        "--main_process_port", "{port}",
        *program,
    ]  # fmt: skip
    return node, launch


def _device(recipe: Recipe, target: Target, host: HostFacts) -> Literal["cpu", "cuda"]:
    if recipe.cluster.gpus_per_node == 0:
        return "cpu"
    if target == "local":
        return "cuda" if host.gpus > 0 else "cpu"
    return "cuda"


def _rendezvous(recipe: Recipe, target: Target, local_port: int | None) -> Rendezvous:
    dist = recipe.distributed
    if target == "local":
        return Rendezvous(
            head="127.0.0.1",
            head_rule="this host (every node runs here)",
            port=local_port,
            port_rule="a free port pair picked at submit time",
            join_timeout_s=dist.join_timeout_s,
            timeout_s=dist.timeout_s,
        )
    return Rendezvous(
        head="$HEAD",
        head_rule='first host of the allocation: scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1',
        port=None,
        port_rule=f"{PORT_BASE} + 2 * (SLURM_JOB_ID % {PORT_SLOTS}); join check on port + 1",
        join_timeout_s=dist.join_timeout_s,
        timeout_s=dist.timeout_s,
    )
