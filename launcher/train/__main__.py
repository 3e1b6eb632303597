"""`python -m launcher.train RUN_DIR`: the code every rank runs, started by `accelerate launch`.

setup -> data -> model -> (resume) -> fit -> evaluate -> save, all driven by the run dir's
recipe.yaml and plan.json.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import traceback
from pathlib import Path

from launcher import faults
from launcher.rundir.durable import write_json
from launcher.rundir.layout import MODEL_DIR, PLAN_FILE, RECIPE_FILE, RESULTS_FILE
from launcher.train.ending import end_process

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the fork after tokenization would warn


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launcher.train RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0]).resolve()
    # A crash in native code (a comm library's abort, a kernel's segfault) prints this rank's Python
    # stack into the node log: the only trace of where it happened.
    faulthandler.enable()
    from launcher.train.memory import keep_freed_memory

    kept_freed_memory = keep_freed_memory()  # before torch allocates anything

    from launcher.plan import Plan
    from launcher.recipe import load_resolved
    from launcher.train.identity import RankIdentity
    from launcher.train.preemption import StopRequest
    from launcher.train.status import rank_status

    plan = Plan.from_dict(json.loads((run_dir / PLAN_FILE).read_text()))
    recipe = load_resolved(run_dir / RECIPE_FILE)
    if plan.device == "xla":  # rank from the XLA runtime (accelerate's XLA launcher sets none)
        from launcher.train.xla import prepare_rank

        prepare_rank()
    who = RankIdentity.from_env(plan.procs_per_node)
    stop = StopRequest()
    stop.install()
    try:
        with rank_status(run_dir, who):
            train(run_dir, recipe, plan, who, stop, kept_freed_memory)
            stop.finish()  # a stop request before this line ends the rank as "stopped"; after it, as "done"
    except BaseException as exc:  # noqa: BLE001
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        # Tearing down a process group whose peer is gone can hang in destructors, and the launcher
        # must see this rank end. The status file already says why.
        end_process(code)
    return 0


def train(run_dir: Path, recipe, plan, who, stop, kept_freed_memory: bool) -> None:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from launcher.rundir.checkpoints import latest_valid
    from launcher.rundir.status import clear_requeue_marker, write_requeue_marker
    from launcher.train.checkpoint import Checkpointer, recipe_fingerprint, start_position
    from launcher.train.cpu_dropout import choose_cpu_dropout, use_numpy_dropout
    from launcher.train.cpu_kernels import route_linears_to_onednn
    from launcher.train.data import build_loaders
    from launcher.train.embedding_grad import keep_embedding_gradients
    from launcher.train.loop import Trainer
    from launcher.train.model import load_model, load_tokenizer, uses_hub_kernels
    from launcher.train.packing import packing_wanted, use_packed_sequences
    from launcher.train.progress import make_progress
    from launcher.train.records import RankRecords
    from launcher.train.save import save_model
    from launcher.train.setup import make_accelerator

    started = time.time()
    # --- setup
    accelerator = make_accelerator(recipe, plan, run_dir)
    set_seed(recipe.train.seed)
    records = RankRecords(run_dir, who)
    if accelerator.is_main_process:  # train.report_to (launcher.train.trackers): names and places are set there
        from launcher.train.trackers import tracker_config

        accelerator.init_trackers(recipe.name, config=tracker_config(recipe, plan))

    # --- data + model
    tokenizer = load_tokenizer(recipe)
    loaders = build_loaders(recipe, tokenizer, accelerator, plan.effective_batch_size, plan.eval_batch_size)
    model = load_model(recipe, plan.device)
    cpu_linear = cpu_linear_for(recipe, plan)
    if cpu_linear == "onednn":
        route_linears_to_onednn(model)
    cpu_dropout = choose_cpu_dropout(recipe.train.cpu_dropout, plan.device)
    attention = use_numpy_dropout(model)["attention"] if cpu_dropout == "numpy" else model.config._attn_implementation
    not_packed = packing_wanted(recipe.train.packed_sequences, plan.device, plan.padding, plan.backend)
    not_packed = not_packed or use_packed_sequences(model)
    # glibc's tuning cannot keep blocks over 32 MiB: the word-embedding gradient keeps its own memory
    # (DeepSpeed partitions and owns the gradients itself)
    keep_gradients = kept_freed_memory and plan.device == "cpu" and plan.backend == "ddp"
    kept_gradients = keep_embedding_gradients(model) if keep_gradients else []
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    optimizer = make_adamw(
        [{"params": decay, "weight_decay": recipe.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        recipe, fused=plan.backend == "ddp" and plan.device != "xla",
    )  # fmt: skip
    model, optimizer, loaders.train = accelerator.prepare(model, optimizer, loaders.train)
    if loaders.eval is not None:
        loaders.eval = accelerator.prepare(loaders.eval)

    # The scheduler is stepped by hand once per optimizer step (not prepared: accelerate would step it
    # once per process), so its length is exactly the planned number of optimizer steps.
    steps = schedule_for(plan, len(loaders.train), recipe)
    scheduler = get_scheduler(recipe.train.scheduler, optimizer, num_warmup_steps=steps.warmup_steps,
                              num_training_steps=steps.total_steps)  # fmt: skip
    accelerator.register_for_checkpointing(scheduler)
    compiles = None
    if plan.device == "xla":  # count XLA compilations in the records; warn when they keep coming
        from launcher.train.xla import CompileWatch

        logs_at = lambda step: step % recipe.train.logging_steps == 0 or step == steps.total_steps  # noqa: E731
        compiles = CompileWatch(accelerator.is_main_process, sync_steps=logs_at)
        records = compiles.counting(records)
    records.write(
        "setup", world_size=accelerator.num_processes, device=str(accelerator.device),
        distributed_type=str(accelerator.distributed_type), mixed_precision=accelerator.mixed_precision,
        train_rows=loaders.train_rows, eval_rows=loaders.eval_rows, micro_batches_per_epoch=len(loaders.train),
        steps_per_epoch=steps.steps_per_epoch, epochs=steps.epochs, total_steps=steps.total_steps,
        warmup_steps=steps.warmup_steps, cpu_linear=cpu_linear, kept_freed_memory=kept_freed_memory,
        kept_gradients=kept_gradients,
        cpu_dropout=cpu_dropout, attention=attention, hub_kernels=uses_hub_kernels(model),
        packed_sequences="on" if not_packed is None else f"off: {not_packed}",
    )  # fmt: skip

    # --- resume from the newest valid checkpoint, if this run has one (requeue, --resume)
    start = None
    found = latest_valid(run_dir)
    if found:
        checkpoint, manifest = found
        start = start_position(manifest, checkpoint, accelerator.num_processes, recipe_fingerprint(recipe),
                               plan.effective_batch_size, plan.backend)  # fmt: skip
        # model, optimizer, scheduler (full states under DDP); the RNG states of the ranks that exist in the
        # checkpoint (dropout does not depend on them: every micro-batch reseeds from its global index)
        accelerator.load_state(str(checkpoint / "state"))
        # accelerate counts micro-batches since the epoch began to know when an accumulation window ends;
        # load_state restores the count rank 0 had under the old layout: count in this layout's units
        accelerator.step = start.batches
        records.write("resume", step=start.step, epoch=start.epoch, batches=start.batches, checkpoint=checkpoint.name)
        if accelerator.is_main_process:
            clear_requeue_marker(run_dir)
            print(f"[train] resumed from {checkpoint.name}: step {start.step}, epoch {start.epoch}, "
                  f"batch {start.batches}", flush=True)  # fmt: skip
    checkpointer = Checkpointer(accelerator, run_dir, recipe, plan.effective_batch_size,
                                hf_files=(accelerator.unwrap_model(model).config, tokenizer))  # fmt: skip

    # --- fit (+ evaluate and checkpoint on the planned cadence)
    progress = make_progress(accelerator.is_main_process, steps.total_steps)
    trainer = Trainer(accelerator, model, optimizer, scheduler, loaders, recipe, steps, plan.backend, records,
                      progress, checkpointer, stop, compiles)  # fmt: skip
    try:
        result = trainer.fit(start)
    finally:
        progress.close()

    if result.preempted:
        records.write("preempted", step=result.steps, checkpoint=result.last_checkpoint.name)
        if accelerator.is_main_process:
            write_requeue_marker(run_dir, result.steps, result.last_checkpoint, stop.signum)
            print(f"[train] stopped at step {result.steps} on request; checkpoint {result.last_checkpoint}", flush=True)
        accelerator.end_training()
        records.close()
        return

    # --- save
    final = result.evals[-1] if result.evals else None
    info = {"name": recipe.name, "steps": result.steps, "metrics": final["metrics"] if final else {}}
    save_model(accelerator, model, tokenizer, run_dir / MODEL_DIR, info)
    records.write("summary", steps=result.steps, epochs=result.epochs_run, samples=result.samples,
                  train_seconds=result.seconds, final=final["metrics"] if final else None)  # fmt: skip
    accelerator.wait_for_everyone()  # every rank's summary is on disk before results.json says "finished"
    if accelerator.is_main_process:
        faults.reach("results")
        write_json(run_dir / RESULTS_FILE, {
            "name": recipe.name,
            "steps": result.steps,
            "epochs": result.epochs_run,
            "world_size": accelerator.num_processes,
            "train_seconds": result.seconds,
            "wall_seconds": round(time.time() - started, 3),
            "final_eval": final,
            "model_dir": str(run_dir / MODEL_DIR),
        })  # fmt: skip
        if final:
            print(f"[train] final {json.dumps({k: round(v, 4) for k, v in final['metrics'].items()})}", flush=True)
        print(f"[train] model saved to {run_dir / MODEL_DIR}", flush=True)
    accelerator.end_training()
    records.close()


def cpu_linear_for(recipe, plan) -> str:
    from launcher.train.cpu_kernels import choose_cpu_linear
    from launcher.train.setup import SetupError

    try:
        return choose_cpu_linear(recipe.train.cpu_linear, plan.device, plan.precision, plan.backend)
    except RuntimeError as exc:
        raise SetupError(str(exc)) from None


def schedule_for(plan, loader_length: int, recipe):
    """The plan's step counts, checked against the data as loaded; computed from it (with the plan's
    own arithmetic) when the plan could not count the rows (a Hub dataset)."""
    from launcher.plan.steps import schedule

    if plan.micro_batches_per_epoch is None:
        return schedule(loader_length, plan.gradient_accumulation_steps, recipe.train)
    if loader_length != plan.micro_batches_per_epoch:
        raise RuntimeError(
            f"planned {plan.micro_batches_per_epoch} micro-batches per epoch but the data gives {loader_length} "
            "(did the data files change since submit?)"
        )
    return plan.schedule


def make_adamw(groups: list[dict], recipe, fused: bool):
    """torch AdamW, fused where torch has the kernel (CPU and CUDA): without it, AdamW on CPU falls back
    to a per-parameter Python loop that took a quarter of every MiniLM step. DeepSpeed wraps its own."""
    import torch

    kwargs = {"lr": recipe.train.lr, "eps": recipe.train.adam_epsilon}
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            pass  # a device or dtype without the fused kernel
    return torch.optim.AdamW(groups, foreach=fused or None, **kwargs)


if __name__ == "__main__":
    returncode = main()
    faults.reach("rank.exit")
    end_process(returncode)
