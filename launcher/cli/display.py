"""Terminal output for plans and rendered files (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from launcher.plan import Plan
from launcher.cli.xla_display import xla_device, xla_shape_rows, xla_world
from launcher.render.commands import launch_command_lines, node_command_lines


def _steps(plan: Plan) -> str:
    if plan.steps_per_epoch is None:
        if plan.total_steps:
            return f"{plan.total_steps} (max_steps); per epoch: counted at run time"
        return "counted at run time (row count of a Hub dataset is known once it is loaded)"
    if plan.total_steps != plan.steps_per_epoch * plan.epochs:  # train.max_steps ends the run mid-epoch
        epochs = plan.total_steps / plan.steps_per_epoch
        return (f"{plan.total_steps} optimizer steps (train.max_steps) = {epochs:.2f} epoch(s) of {plan.steps_per_epoch}, "
                f"warmup {plan.warmup_steps}")  # fmt: skip
    total = f"{plan.steps_per_epoch} per epoch x {plan.epochs} epoch(s) = {plan.total_steps}"
    return f"{total} optimizer steps, warmup {plan.warmup_steps}"


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"ftlaunch plan: {plan.name}", show_header=False, title_justify="left")
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    device = f"cuda, {plan.gpus_per_node} GPU(s) per node" if plan.device == "cuda" else "cpu (gloo)"
    rows_train = "?" if plan.train_rows is None else f"{plan.train_rows:,}"
    rows_eval = "?" if plan.eval_rows is None else f"{plan.eval_rows:,}"
    backend = plan.backend if plan.backend == "ddp" else f"deepspeed ZeRO-{plan.zero_stage}"
    port = plan.rendezvous.port if plan.rendezvous.port is not None else plan.rendezvous.port_rule
    padding = str(plan.padding) + (f", multiple of {plan.pad_to_multiple_of}" if plan.pad_to_multiple_of else "")
    table.add_row("run dir", plan.run_dir)
    table.add_row("target", plan.target)
    if plan.xla:
        world, device = xla_world(plan), xla_device(plan)
    else:
        world = f"{plan.world_size} = {plan.nodes} node(s) x {plan.procs_per_node} process(es)"
    table.add_row("world size", world)
    table.add_row("device", device)
    if plan.entrypoint is not None:
        _script_rows(plan, table, backend, port)
        return table
    table.add_row(
        "effective batch",
        f"{plan.effective_batch_size} = {plan.per_device_batch_size} per device x "
        f"{plan.gradient_accumulation_steps} accumulation x {plan.world_size} processes",
    )
    table.add_row("data rows", f"train {rows_train}, eval {rows_eval}")
    table.add_row("steps", _steps(plan))
    table.add_row("precision", plan.precision)
    table.add_row("padding", f"{padding} (max_length {plan.max_length})")
    for key, value in xla_shape_rows(plan) if plan.xla else []:
        table.add_row(key, value)
    table.add_row("backend", backend)
    table.add_row("rendezvous", f"head {plan.rendezvous.head_rule}; port {port}")
    for note in plan.notes:
        table.add_row("note", note)
    return table


def _script_rows(plan: Plan, table: Table, backend: str, port) -> None:
    """A user's own script: what ftlaunch sets up; batch, data and steps are the script's."""
    entry = plan.entrypoint
    table.add_row("script", f"{entry['script']} (copy of {entry['source']})")
    table.add_row("script args", " ".join(entry["args"]) or "(none)")
    batch = (
        f"{plan.effective_batch_size} = {plan.per_device_batch_size} per device x "
        f"{plan.gradient_accumulation_steps} accumulation x {plan.world_size} processes"
        if plan.effective_batch_size
        else f"set by your script; gradient accumulation {plan.gradient_accumulation_steps}"
    )
    table.add_row("effective batch", batch)
    table.add_row("precision", plan.precision)
    table.add_row("backend", backend)
    table.add_row("rendezvous", f"head {plan.rendezvous.head_rule}; port {port}")
    for note in plan.notes:
        table.add_row("note", note)


def print_plan(plan: Plan, console: Console) -> None:
    console.print(plan_table(plan))
    console.print("[bold]node commands[/bold] (the node agent checks every node joined, then runs accelerate launch):")
    for line in node_command_lines(plan):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    console.print("[bold]training launch per node[/bold]:")
    for line in launch_command_lines(plan):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def print_files(files: dict[str, str], console: Console) -> None:
    for name, text in files.items():
        console.rule(f"[bold]{name}")
        console.print(text, markup=False, highlight=False, end="" if text.endswith("\n") else "\n", soft_wrap=True)
