"""The step arithmetic, in one place: rows -> micro-batches -> optimizer steps -> epochs, warmup.

The plan applies it when the row count is known at submit time (local files); the training
entrypoint applies the same function to the loaded data when it is not (a Hub dataset), and
otherwise only checks that the data agrees with the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launcher.recipe.schema import TrainSpec


@dataclass(frozen=True)
class Schedule:
    micro_batches_per_epoch: int | None  # per process; None: not known before the data is loaded
    steps_per_epoch: int | None  # optimizer steps
    epochs: int | None
    total_steps: int | None
    warmup_steps: int | None


def micro_batches_per_epoch(train_rows: int, world_size: int, per_device_batch_size: int) -> int:
    """Every process sees ceil(rows / world) rows (accelerate pads the last shard), batched per device."""
    return math.ceil(math.ceil(train_rows / world_size) / per_device_batch_size)


def schedule(micro_batches: int | None, accumulation: int, train: TrainSpec) -> Schedule:
    """A trailing partial accumulation window still ends with an optimizer step; max_steps caps the
    run (and sets the epochs it needs), otherwise train.epochs passes."""
    per_epoch = math.ceil(micro_batches / accumulation) if micro_batches is not None else None
    if train.max_steps:
        total = train.max_steps
        epochs = math.ceil(total / per_epoch) if per_epoch else None
    elif per_epoch is not None:
        epochs = train.epochs
        total = per_epoch * epochs
    else:
        epochs = total = None
    warmup = (train.warmup_steps or math.ceil(train.warmup_ratio * total)) if total is not None else None
    return Schedule(micro_batches, per_epoch, epochs, total, warmup)
