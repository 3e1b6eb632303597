"""Plan table rows for XLA (TPU) plans: where it runs and the fixed shapes every batch will have."""

from __future__ import annotations

from launcher.plan import Plan


def xla_world(plan: Plan) -> str:
    kind = f" ({plan.xla['accelerator_type']})" if plan.xla.get("accelerator_type") else ""
    return f"{plan.world_size} = {plan.nodes} host(s) x {plan.procs_per_node} XLA device(s){kind}"


def xla_device(plan: Plan) -> str:
    tpu = plan.xla.get("tpu")
    if tpu:
        project = f", project {tpu['project']}" if tpu.get("project") else ""
        return f"xla: TPU {tpu['name']} ({plan.xla['accelerator_type']}, zone {tpu['zone']}{project})"
    if plan.xla["pjrt_device"] == "TPU":
        return "xla: this host's TPU chips (PJRT_DEVICE=TPU)"
    return "xla: this host's CPU (PJRT_DEVICE=CPU)"


def xla_shape_rows(plan: Plan) -> list[tuple[str, str]]:
    xla = plan.xla
    length = xla["train_batch_shape"][1]
    width = str(length) if length is not None else "longest in batch (DYNAMIC: recompiles)"
    dropped = xla["train_rows_dropped_per_epoch"]
    if dropped is None:
        drop = "a ragged last batch is dropped"
    elif dropped:
        drop = f"the last {dropped} row(s) of each epoch's shuffle are dropped"
    else:
        drop = "no row dropped (the rows fill whole batches)"
    filler = xla["eval_filler_rows"]
    fill = f"{filler} filler row(s)" if filler is not None else "filler rows"
    fill += " complete the last batch(es) and are left out of the metrics"
    return [
        ("train batches", f"every one [{xla['train_batch_shape'][0]}, {width}] per device; {drop}"),
        ("eval batches", f"every one [{xla['eval_batch_shape'][0]}, {width}] per device; {fill}"),
    ]
