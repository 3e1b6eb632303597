"""The training loop: gradient accumulation via accelerate, one scheduler step per optimizer step,
evaluation, checkpoints and stop requests on the planned cadence, no host sync except at logging
steps (and the tiny stop-agreement all-reduce).

    for each epoch from where the run stands:
        skip the micro-batches a resumed run already consumed
        for each micro-batch: forward, backward, (optimizer step) -> log, evaluate, save, stop?
        the epoch ends: evaluate, save (epoch strategy)
    evaluate the final model (if its step was not evaluated yet)
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from launcher import faults
from launcher.plan.steps import Schedule
from launcher.recipe.schema import Recipe
from launcher.train.checkpoint import Position
from launcher.train.embedding_grad import clip_grad_norm_
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
class RunState:
    """Where the run stands: what a checkpoint records and a resumed run starts from."""

    step: int = 0
    epoch: int = 0
    batches: int = 0  # micro-batches of `epoch` consumed (per process)
    samples: int = 0  # training rows this rank saw before the current window
    evaluated_at: int = -1  # the step of the newest evaluation
    saved_at: int = -1  # the step of the newest checkpoint
    evals: list[dict] = field(default_factory=list)
    last_checkpoint: Path | None = None

    @classmethod
    def resumed_from(cls, start: Position | None) -> RunState:
        if start is None:
            return cls()
        # The checkpoint it resumes from is this step's: saving it again would gain nothing.
        return cls(step=start.step, epoch=start.epoch, batches=start.batches, samples=start.samples, saved_at=start.step)

    def progress(self, micro_batches_per_epoch: int) -> float:
        """Epochs done, as a fraction (1.5 = half-way through the second epoch)."""
        return round(self.epoch + self.batches / max(micro_batches_per_epoch, 1), 4)


@dataclass
class FitResult:
    steps: int
    epochs_run: int
    samples: int
    seconds: float
    evals: list[dict]
    preempted: bool = False
    last_checkpoint: Path | None = None


RECORD_ROWS = os.environ.get("FTL_RECORD_ROWS") == "1"  # tests: which rows every micro-batch held


def micro_batch_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 1_000_003 + index


def row_ids(batch: dict) -> list[str]:
    """A short digest of each row's tokens (padding left out) and label: the same row on any layout."""
    ids, mask, labels = batch["input_ids"].cpu(), batch["attention_mask"].cpu(), batch["labels"].cpu()
    return [hashlib.sha1(f"{ids[i][mask[i] == 1].tolist()}|{labels[i].item()}".encode()).hexdigest()[:12]
            for i in range(ids.shape[0])]  # fmt: skip


def param_checksum(model) -> float:
    """Sum of all parameters in float64: equal on every rank iff the ranks are synchronised."""
    with torch.no_grad():
        return float(sum(p.detach().sum(dtype=torch.float64) for p in model.parameters()))  # no float64 copies


@dataclass
class Trainer:
    """What the loop works with; `fit` is the loop itself."""

    accelerator: object
    model: object
    optimizer: object
    scheduler: object
    loaders: object
    recipe: Recipe
    schedule: Schedule
    backend: str
    records: object
    progress: object
    checkpointer: object
    stop: object
    compiles: object = None  # XLA: counts compilations after each step (launcher.train.xla.CompileWatch)

    def fit(self, start: Position | None = None) -> FitResult:
        run = RunState.resumed_from(start)
        train, total = self.recipe.train, self.schedule.total_steps
        loader = self.loaders.train
        window = Window()
        started = time.perf_counter()
        self.model.train()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        reseed = self.accelerator.device.type != "xla"  # XLA keeps its own device RNG (and one graph)
        self.stop.in_loop = True
        faults.reach("train.before_first_step")
        while run.epoch < self.schedule.epochs and run.step < total:
            loader.set_epoch(run.epoch)  # the order depends on seed + epoch only: a resumed run replays it
            # Resume mid-epoch at the next unseen micro-batch (none left: the epoch only has to end).
            skip = run.batches
            batches = [] if skip >= len(loader) else self.accelerator.skip_first_batches(loader, skip) if skip else loader
            for run.batches, batch in enumerate(batches, start=skip + 1):
                # Rank r of W takes micro-batches r, r+W, ... of the epoch's global order: this one's index
                # there names its rows on any layout, and seeds its dropout, so that a run resumed on
                # other nodes x processes draws the same masks for the same rows.
                index = (run.batches - 1) * world + rank
                if reseed:
                    torch.manual_seed(micro_batch_seed(train.seed, run.epoch, index))
                if RECORD_ROWS:
                    self.records.write("rows", step=run.step + 1, epoch=run.epoch, micro_batch=index, rows=row_ids(batch))
                with self.accelerator.accumulate(self.model):
                    outputs = self.model(**batch)
                    self.accelerator.backward(outputs.loss)
                    if self.accelerator.sync_gradients and train.max_grad_norm:
                        clip_grad_norm_(self.accelerator, self.model.parameters(), train.max_grad_norm)
                    self.optimizer.step()
                    if self.accelerator.sync_gradients and not self.accelerator.optimizer_step_was_skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window.add(outputs.loss, batch)
                if not self.accelerator.sync_gradients:
                    continue
                run.step += 1
                window.steps += 1
                if self.compiles is not None:  # XLA: a graph compiled after the first epoch is a shape leak
                    self.compiles.after_step(run.step, run.epoch)
                faults.reach("train.step", run.step)
                if run.step % train.logging_steps == 0 or run.step == total:
                    run.samples += window.samples
                    self._log(run, window, len(loader))
                    window = Window()
                if train.eval_strategy == "steps" and run.step % train.eval_steps == 0:
                    self._evaluate(run, len(loader))
                if train.save_strategy == "steps" and run.step % train.save_steps == 0:
                    self._save(run, run.samples + window.samples)
                if self.stop.agreed(self.accelerator):
                    if run.saved_at != run.step:
                        self._save(run, run.samples + window.samples)
                    self.stop.in_loop = False
                    return self._result(run, window, started, preempted=True)
                if run.step >= total:
                    break
            else:  # every micro-batch of the epoch was consumed
                run.epoch, run.batches = run.epoch + 1, 0
            # One place where an epoch (or the run, at max_steps) ends: evaluate, then checkpoint.
            if train.eval_strategy == "epoch":
                self._evaluate(run, len(loader))
            if train.save_strategy == "epoch":
                self._save(run, run.samples + window.samples)
        self.stop.in_loop = False
        self._evaluate(run, len(loader))  # the reported metric is always that of the final model
        return self._result(run, window, started)

    def _log(self, run: RunState, window: Window, length: int) -> None:
        info = window.summary()
        lr = self.scheduler.get_last_lr()[0]
        # ZeRO-3 shards parameters: a local sum means nothing there
        extra = {"param_checksum": param_checksum(self.model)} if self.backend == "ddp" else {}
        epoch = run.progress(length)
        self.records.write("train", step=run.step, epoch=epoch, lr=lr, **info, **extra)
        self.accelerator.log({"train_loss": info["loss"], "lr": lr, "samples_per_s": info["samples_per_s"]}, step=run.step)
        self.progress.update(run.step, {"epoch": f"{epoch:.2f}", "loss": f"{info['loss']:.4f}", "lr": f"{lr:.2e}"})

    def _evaluate(self, run: RunState, length: int) -> None:
        if self.loaders.eval is None or run.evaluated_at == run.step:
            return
        result = evaluate(self.model, self.loaders.eval, self.accelerator, self.recipe)
        result.update(step=run.step, epoch=run.progress(length))
        run.evals.append(result)
        run.evaluated_at = run.step
        self.records.write("eval", **result)
        self.accelerator.log(result["metrics"], step=run.step)
        shown = {k: round(v, 4) for k, v in result["metrics"].items()}
        self.progress.message(f"eval at step {run.step}: {shown} ({result['rows']} rows, {result['seconds']} s)")

    def _save(self, run: RunState, samples: int) -> None:
        if run.saved_at == run.step:
            return
        metrics = run.evals[-1]["metrics"] if run.evals and run.evaluated_at == run.step else None
        position = Position(run.step, run.epoch, run.batches, samples)
        began = time.perf_counter()
        run.last_checkpoint = self.checkpointer.save(position, metrics)
        run.saved_at = run.step
        self.records.write("checkpoint", step=run.step, epoch=run.epoch, batches=run.batches,
                           path=run.last_checkpoint.name, seconds=round(time.perf_counter() - began, 3))  # fmt: skip
        self.progress.message(f"checkpoint at step {run.step}: {run.last_checkpoint}")

    def _result(self, run: RunState, window: Window, started: float, preempted: bool = False) -> FitResult:
        epochs_run = run.epoch + (1 if run.batches else 0)
        return FitResult(run.step, epochs_run, run.samples + window.samples, round(time.perf_counter() - started, 3),
                         run.evals, preempted, run.last_checkpoint)  # fmt: skip
