"""The training loop: gradient accumulation via accelerate, one scheduler step per optimizer step,
evaluation, checkpoints and stop requests on the planned cadence, no host sync except at logging
steps (and the tiny stop-agreement all-reduce)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from launcher.recipe.schema import Recipe
from launcher.train.checkpoint import Position
from launcher.train.evaluation import evaluate


@dataclass
class Window:
    """What happened since the last log line; tensors stay on the device until logged."""

    loss_sum: torch.Tensor | float = 0.0
    micro_batches: int = 0
    steps: int = 0
    samples: int = 0
    tokens: torch.Tensor | int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, batch: dict) -> None:
        if not self.micro_batches:
            # Sums start as tensors uploaded from the host, not Python zeros (a constant in the step's graph):
            # the first step of a window then has the same graph as the others, which XLA compiles once.
            self.loss_sum = torch.zeros(1, dtype=torch.float32).to(loss.device)
            self.tokens = torch.zeros(1, dtype=torch.int64).to(loss.device)
        self.loss_sum = self.loss_sum + loss.detach().float()
        self.micro_batches += 1
        self.samples += int(batch["labels"].shape[0])
        self.tokens = self.tokens + batch["attention_mask"].sum()

    def summary(self) -> dict:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        loss = float(self.loss_sum) / max(self.micro_batches, 1)
        return {
            "loss": round(loss, 6),
            "samples_per_s": round(self.samples / seconds, 3),
            "tokens_per_s": round(float(self.tokens) / seconds, 1),
            "step_seconds": round(seconds / max(self.steps, 1), 4),
        }


@dataclass
class FitResult:
    steps: int
    epochs_run: int
    samples: int
    seconds: float
    evals: list[dict]
    preempted: bool = False
    last_checkpoint: object = None


def steps_for(loader_len: int, accumulation: int, recipe: Recipe) -> tuple[int, int, int]:
    """(optimizer steps per epoch, epochs, total steps) from the prepared loader's length."""
    per_epoch = math.ceil(loader_len / accumulation)
    if recipe.train.max_steps:
        total = recipe.train.max_steps
        return per_epoch, math.ceil(total / per_epoch), total
    return per_epoch, recipe.train.epochs, per_epoch * recipe.train.epochs


def param_checksum(model) -> float:
    """Sum of all parameters in float64: equal on every rank iff the ranks are synchronised."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters()))


def fit(accelerator, model, optimizer, scheduler, loaders, recipe: Recipe, plan, records, progress,
        checkpointer, stop, start: Position | None = None, compiles=None) -> FitResult:  # fmt: skip
    train = recipe.train
    per_epoch, epochs, total = steps_for(len(loaders.train), plan.gradient_accumulation_steps, recipe)
    checksum = plan.backend == "ddp"  # ZeRO-3 shards parameters: a local sum means nothing there
    step = start.step if start else 0
    samples = start.samples if start else 0
    evals: list[dict] = []
    evaluated_at = saved_at = -1
    last_checkpoint = None
    window = Window()
    started = time.perf_counter()
    model.train()

    def run_eval(epoch_float: float) -> None:
        nonlocal evaluated_at
        result = evaluate(model, loaders.eval, accelerator, recipe)
        result.update(step=step, epoch=round(epoch_float, 4))
        evals.append(result)
        evaluated_at = step
        records.write("eval", **result)
        accelerator.log(result["metrics"], step=step)
        shown = {k: round(v, 4) for k, v in result["metrics"].items()}
        progress.message(f"eval at step {step}: {shown} ({result['rows']} rows, {result['seconds']} s)")

    def save(position: Position) -> None:
        nonlocal saved_at, last_checkpoint
        metrics = evals[-1]["metrics"] if evals and evaluated_at == step else None
        began = time.perf_counter()
        last_checkpoint = checkpointer.save(position, metrics)
        saved_at = step
        records.write("checkpoint", step=step, epoch=position.epoch, batches=position.batches, path=last_checkpoint.name,
                      seconds=round(time.perf_counter() - began, 3))  # fmt: skip
        progress.message(f"checkpoint at step {step}: {last_checkpoint}")

    def result(preempted: bool = False) -> FitResult:
        return FitResult(step, epoch + 1, samples + window.samples, round(time.perf_counter() - started, 3), evals,
                         preempted, last_checkpoint)  # fmt: skip

    first_epoch = start.epoch if start else 0
    epoch = first_epoch
    stop.in_loop = True
    for epoch in range(first_epoch, epochs):
        loaders.train.set_epoch(epoch)
        length = len(loaders.train)
        skip = start.batches if start and epoch == start.epoch else 0
        # Resume mid-epoch at the next unseen batch (same shuffle: the order depends on seed + epoch).
        batches = accelerator.skip_first_batches(loaders.train, skip) if 0 < skip < length else ([] if skip else loaders.train)
        epoch_float = epoch + skip / length
        for micro_index, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(model):
                outputs = model(**batch)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and train.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window.add(outputs.loss, batch)
            if not accelerator.sync_gradients:
                continue
            step += 1
            window.steps += 1
            if compiles is not None:  # XLA: a graph compiled after the first epoch is a shape leak
                compiles.after_step(step, epoch)
            epoch_float = epoch + (micro_index + 1) / length
            if step % train.logging_steps == 0 or step == total:
                info = window.summary()
                samples += window.samples
                lr = scheduler.get_last_lr()[0]
                extra = {"param_checksum": param_checksum(model)} if checksum else {}
                records.write("train", step=step, epoch=round(epoch_float, 4), lr=lr, **info, **extra)
                accelerator.log({"train_loss": info["loss"], "lr": lr, "samples_per_s": info["samples_per_s"]}, step=step)
                progress.update(step, {"epoch": f"{epoch_float:.2f}", "loss": f"{info['loss']:.4f}", "lr": f"{lr:.2e}"})
                window = Window()
            if loaders.eval is not None and train.eval_strategy == "steps" and step % train.eval_steps == 0:
                run_eval(epoch_float)
            position = Position(step, epoch, micro_index + 1, samples + window.samples)
            if train.save_strategy == "steps" and step % train.save_steps == 0:
                save(position)
            if stop.agreed(accelerator):
                if saved_at != step:
                    save(position)
                stop.in_loop = False
                return result(preempted=True)
            if step >= total:
                break
        if loaders.eval is not None and train.eval_strategy == "epoch" and evaluated_at != step:
            run_eval(epoch_float)
        if train.save_strategy == "epoch" and saved_at != step:
            save(Position(step, epoch + 1, 0, samples + window.samples))
        if step >= total:
            break
    stop.in_loop = False
    if loaders.eval is not None and evaluated_at != step:
        run_eval(epoch_float)  # the reported metric is always that of the final model
    return result()
