"""The Accelerator, configured from the plan, and checks that the launch really is what was planned."""

from __future__ import annotations

import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import torch

from launcher.cpu import SLOW_BF16, native_bf16
from launcher.plan import Plan
from launcher.recipe.schema import Recipe


class SetupError(RuntimeError):
    """The processes that started are not the job that was planned."""


def quiet_library_progress(is_main: bool) -> None:
    """datasets/transformers progress bars only where a person watches: main process, on a terminal."""
    import sys

    if is_main and sys.stdout.isatty():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def make_accelerator(recipe: Recipe, plan: Plan, run_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration

    on_cpu = plan.device == "cpu"
    if plan.precision == "fp16" and not torch.cuda.is_available():
        # accelerate would silently train in fp32 here
        raise SetupError("train.precision fp16 needs a CUDA GPU; this node has none (use bf16 or no)")
    if on_cpu and plan.precision == "bf16" and native_bf16() is False:
        # a Slurm CPU partition's nodes are only known here; locally the plan refused it already
        raise SetupError(f"train.precision on {socket.gethostname()}: {SLOW_BF16}")
    if plan.backend == "deepspeed":
        check_deepspeed_file(recipe, plan, run_dir)
        # DeepSpeed 0.19 calls collectives torch 2.13 deprecates: one warning per call, every step, every rank.
        warnings.filterwarnings(
            "ignore", r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated", FutureWarning
        )
    from launcher.train.trackers import make_trackers

    try:
        trackers = make_trackers(recipe, run_dir, is_main=int(os.environ.get("RANK", "0")) == 0)
    except LookupError as exc:
        raise SetupError(f"train.report_to: {exc} is not installed for this Python (pip install 'ftlaunch[trackers]'); "
                         "accelerate would leave it out without a word") from None  # fmt: skip
    process_group = InitProcessGroupKwargs(timeout=timedelta(seconds=plan.rendezvous.timeout_s))
    if on_cpu and plan.backend == "deepspeed" and plan.world_size > 1:
        process_group.backend = "gloo"  # accelerate would ask DeepSpeed for NCCL/ccl
    accelerator = Accelerator(
        # DeepSpeed on CPU needs the DeepSpeed plugin with gloo, not cpu=True (which drops DeepSpeed).
        cpu=on_cpu and plan.backend != "deepspeed",
        mixed_precision=plan.precision,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        kwargs_handlers=[process_group],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
    )
    quiet_library_progress(accelerator.is_main_process)
    if plan.device == "xla":
        from launcher.train.xla import check_xla

        check_xla(accelerator)
    if accelerator.num_processes != plan.world_size:
        # The classic silent failure: N processes that each train alone, or one process instead of N.
        raise SetupError(
            f"planned world size {plan.world_size} but this process sees {accelerator.num_processes} "
            f"(distributed type {accelerator.distributed_type}); refusing to train unsynchronised ranks"
        )
    return accelerator


def check_deepspeed_file(recipe: Recipe, plan: Plan, run_dir: Path) -> dict:
    """The run dir's deepspeed.json (what accelerate hands DeepSpeed) must agree with the plan, and
    DeepSpeed itself must accept it; checked on every rank before any process group exists, so a
    hand-edited file fails fast with one line naming the fields instead of an assertion mid-prepare."""
    from launcher.render.deepspeed_config import (
        FILE_NAME,
        DeepSpeedConfigMismatch,
        deepspeed_validate,
        load_deepspeed_config,
    )

    path = Path(run_dir) / FILE_NAME
    given = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")  # set by `accelerate launch` from accelerate.yaml
    if given and Path(given).resolve() != path.resolve():
        raise SetupError(f"accelerate.yaml points DeepSpeed at {given}, not this run's {path} (was the run dir moved?)")
    try:
        config = load_deepspeed_config(path, plan, recipe)
        deepspeed_validate(config, plan.world_size)
    except DeepSpeedConfigMismatch as exc:
        raise SetupError(str(exc)) from None
    return config
