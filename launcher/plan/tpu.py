"""TPUs (XLA): the accelerator type's hosts x chips, the checks a TPU job must pass, and its fixed shapes.

A TPU runs compiled XLA graphs: every new input shape compiles a new graph (about 20 s each on a
CPU, seconds on a TPU), so a TPU job is fast only if every batch has the same shape. The plan
therefore fixes the shapes up front and says what they are: training batches of exactly
per_device_batch_size x max_length (the ragged last batch of an epoch is dropped), evaluation
batches of exactly eval_batch_size x max_length (the last one is filled up with rows that are
left out of the metrics).

Pure: nothing here imports torch or torch_xla.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from launcher.errors import UserError

# v2/v3: the number counts TensorCores, 2 per chip, and torch_xla runs one device per core: 8 per host.
# v4/v5p: the number counts TensorCores, 2 per chip fused into one device ("megacore"): 4 per host.
# v5e (v5litepod)/v6e: the number counts chips; slices up to 8 chips are one host, larger ones 4 chips per host.
_TYPE = re.compile(r"^(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)$")
EXAMPLE_TYPES = "v2-8, v3-32, v4-8, v4-32, v5p-16, v5litepod-16, v6e-8"
# What dynamic padding costs on XLA (bench/xla_padding.py: MiniLM, 24 steps, XLA on a CPU).
DYNAMIC_COST = "measured: 16 compilations instead of 4, 3.3x the time, for 24 MiniLM steps"


@dataclass(frozen=True)
class TpuTopology:
    accelerator_type: str
    hosts: int
    devices_per_host: int  # XLA devices each host runs (one process each, one per chip on v4 and later)

    @property
    def devices(self) -> int:
        return self.hosts * self.devices_per_host


def topology(accelerator_type: str) -> TpuTopology:
    """v4-32 -> 4 hosts x 4 devices; ValueError for a type this table does not know."""
    match = _TYPE.match(accelerator_type.strip().lower())
    if not match:
        raise ValueError(f"{accelerator_type!r} is not a TPU accelerator type ftlaunch knows (e.g. {EXAMPLE_TYPES})")
    family, number = match.group(1), int(match.group(2))
    if family in ("v2", "v3"):
        if number % 8:
            raise ValueError(f"{accelerator_type!r}: {family} slices come in multiples of 8 TensorCores")
        return TpuTopology(accelerator_type, number // 8, 8)
    if family in ("v4", "v5p"):
        if number < 8 or number % 8:
            raise ValueError(f"{accelerator_type!r}: {family} slices come in multiples of 8 TensorCores (4 chips)")
        chips = number // 2
        return TpuTopology(accelerator_type, chips // 4, 4)
    if number <= 8:  # v5e/v6e: a single host up to 8 chips
        if number not in (1, 4, 8):
            raise ValueError(f"{accelerator_type!r}: single-host {family} slices have 1, 4 or 8 chips")
        return TpuTopology(accelerator_type, 1, number)
    if number % 4:
        raise ValueError(f"{accelerator_type!r}: multi-host {family} slices come in multiples of 4 chips")
    return TpuTopology(accelerator_type, number // 4, 4)


def tpu_problems(recipe) -> Iterator[tuple[str, str]]:
    """Recipe rules for `cluster.accelerator: tpu` (and a stray `cluster.tpu` without it)."""
    cluster = recipe.cluster
    if cluster.accelerator != "tpu":
        if cluster.tpu is not None:
            yield "cluster.tpu", "only used with cluster.accelerator: tpu (--tpu NAME sets both)"
        return
    if cluster.tpu is not None:
        try:
            topology(cluster.tpu.type)
        except ValueError as exc:
            yield "cluster.tpu.type", str(exc)
    if "nodes" in cluster.model_fields_set and cluster.nodes != 1:
        yield "cluster.nodes", "on a TPU the hosts follow from cluster.tpu.type (v4-32: 4 hosts); leave cluster.nodes at 1"
    if cluster.procs_per_node is not None:
        yield "cluster.procs_per_node", "on a TPU every host runs one process per chip; leave cluster.procs_per_node unset"
    if cluster.container is not None:
        yield "cluster.container", "containers are for Slurm; a TPU VM runs ftlaunch from its own Python environment"
    if recipe.entrypoint is not None:
        yield "entrypoint", "your own script cannot run on a TPU through ftlaunch yet: the built-in trainer does"
        return
    if recipe.distributed.backend == "deepspeed":
        yield "distributed.backend", "DeepSpeed does not run on TPUs: use ddp (XLA data parallel)"
    if recipe.train.precision == "fp16":
        yield "train.precision", "TPUs have no fp16 mixed precision: use bf16 (native on TPUs) or no"
    if recipe.model.hub_kernels == "on":
        yield "model.hub_kernels", "the kernels package has no XLA device: set it to auto or off on a TPU"


@dataclass(frozen=True)
class XlaPlacement:
    """Where an XLA job runs: a TPU pod slice (target tpu), this host's TPU chips, or this host's CPU."""

    pjrt_device: str  # PJRT_DEVICE: TPU or CPU
    hosts: int
    devices_per_host: int
    accelerator_type: str | None  # None: a local run on this host's chips or CPU
    tpu: dict | None  # {name, zone, project} for the pod target


def xla_placement(recipe, target: str, host, notes: list[str]) -> XlaPlacement:
    """Hosts x devices for an XLA plan; UserError for what cannot run (one line naming the field)."""
    cluster, data = recipe.cluster, recipe.data
    if target == "local":
        if not host.torch_xla:
            raise UserError(
                f"cluster.accelerator: tpu runs on XLA, and this interpreter ({host.python}) has no torch_xla: "
                "install torch-xla beside ftlaunch (python tests/xla_venv.py builds such a venv) and run ftlaunch from it"
            )
        if host.tpu_chips:
            placement = XlaPlacement("TPU", 1, host.tpu_chips, None, None)
        else:
            placement = XlaPlacement("CPU", 1, 1, None, None)
            notes.append("no TPU on this host: XLA runs on the CPU (PJRT_DEVICE=CPU), the TPU code path for testing; "
                         "every new graph compiles on the CPU (seconds each)")  # fmt: skip
    elif target == "tpu":
        spec = cluster.tpu
        if spec is None:
            raise UserError("cluster.tpu: a TPU job needs the TPU's name and zone: --tpu NAME --zone ZONE")
        shape = topology(spec.type)
        tpu = {"name": spec.name, "zone": spec.zone, "project": spec.project}
        placement = XlaPlacement("TPU", shape.hosts, shape.devices_per_host, shape.accelerator_type, tpu)
        if "type" not in spec.model_fields_set:
            notes.append(f"cluster.tpu.type not set: planned for {spec.type}; the pod script checks the TPU's real "
                         "type before it starts (--tpu-type to plan for another)")  # fmt: skip
    else:
        raise UserError(f"cluster.accelerator: tpu does not run on {target}: submit to the TPU itself (--tpu NAME) or --local")
    if data is not None and data.padding == "dynamic":
        if placement.pjrt_device == "TPU":
            raise UserError(
                "data.padding: dynamic compiles a new XLA graph for every new batch length on a TPU "
                f"({DYNAMIC_COST}); set data.padding: max_length (--tpu sets it)"
            )
        notes.append(f"data.padding dynamic on XLA: every new batch length compiles a new graph ({DYNAMIC_COST}); "
                     "allowed on XLA:CPU to measure it, refused on a TPU")  # fmt: skip
    return placement


def micro_batches(train_rows: int, world: int, per_device: int) -> int:
    """Micro-batches per process per epoch when the ragged last batch is dropped (as accelerate shards
    a drop_last loader: whole batches, dealt round-robin, an incomplete round dropped)."""
    return (train_rows // per_device) // world


def xla_section(placement: XlaPlacement, recipe, world: int, train_rows: int | None, eval_rows: int | None,
                eval_batch: int) -> dict:  # fmt: skip
    """plan.json's `xla`: where it runs and the fixed shapes every batch will have."""
    data, train = recipe.data, recipe.train
    length = data.max_length if data.padding == "max_length" else None  # None: per batch (dynamic)
    dropped = None
    if train_rows is not None:
        dropped = train_rows - micro_batches(train_rows, world, train.per_device_batch_size) * train.per_device_batch_size * world
    filler = None
    if eval_rows is not None:
        # Evaluation rows are dealt out in rounds of eval_batch x world; the last round is filled up.
        filler = math.ceil(eval_rows / (eval_batch * world)) * eval_batch * world - eval_rows
    return {
        **asdict(placement),
        "train_batch_shape": [train.per_device_batch_size, length],
        "eval_batch_shape": [eval_batch, length],
        "train_last_batch": "drop",
        "train_rows_dropped_per_epoch": dropped,
        "eval_filler_rows": filler,
    }


def xla_commands(python: str, run_dir: str) -> tuple[list[str], list[str]]:
    """(node agent command, accelerate launch command): PJRT does the rendezvous itself (from the TPU
    VM's metadata), so no head or port; accelerate's XLA launcher starts one process per local device
    and calls the entrypoint module's `main`."""
    node = [python, "-m", "launcher.run.node", run_dir, "--machine-rank", "{machine_rank}"]
    launch = [python, "-m", "accelerate.commands.launch", "--config_file", f"{run_dir}/accelerate.yaml",
              "-m", "launcher.train.__main__", run_dir]  # fmt: skip
    return node, launch


def xla_rendezvous(placement: XlaPlacement, dist) -> dict:
    """Rendezvous fields: PJRT finds its peers itself (on a TPU VM from the metadata server), so there is
    no head address or port to plan, and no join check."""
    if placement.accelerator_type is None:
        head, rule = "127.0.0.1", "this host (accelerate's XLA launcher starts one process per device)"
    else:
        head, rule = "worker 0", "worker 0, found by the TPU runtime (PJRT) from the TPU VM metadata"
    return {"head": head, "head_rule": rule, "port": None, "port_rule": "none: PJRT's own",
            "join_timeout_s": dist.join_timeout_s, "timeout_s": dist.timeout_s}  # fmt: skip
