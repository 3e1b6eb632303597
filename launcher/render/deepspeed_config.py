"""The DeepSpeed config file (RUN_DIR/deepspeed.json): rendered from the recipe + plan, nothing else.

It is the single source of truth for DeepSpeed: accelerate.yaml points at it (`deepspeed_config_file`),
and every value accelerate could otherwise fill in ("auto") is written out here, so what the dry run
prints is what DeepSpeed runs with:

- batch: `train_micro_batch_size_per_gpu` = per-device batch, `gradient_accumulation_steps`, and
  `train_batch_size` = micro x accumulation x world size (agree by construction);
- `gradient_clipping` = train.max_grad_norm (0.0 = off): under DeepSpeed the engine clips, accelerate's
  `clip_grad_norm_` does not;
- `zero_optimization`: the stage with bucket/overlap settings for it, optimizer/parameter offload to
  CPU, and for stage 3 `stage3_gather_16bit_weights_on_model_save: true` (the final save gathers the
  shards; without it accelerate's `get_state_dict` refuses);
- `bf16` / `fp16` blocks matching train.precision (fp16 with dynamic loss scaling);
- no `optimizer` / `scheduler` blocks: the entrypoint builds torch AdamW and the transformers scheduler,
  which reach DeepSpeed as a "client optimizer" (`zero_allow_untested_optimizer: true`). With optimizer
  offload accelerate would swap that AdamW for DeepSpeedCPUAdam (a C++ extension compiled on first use,
  about 50 s) unless `zero_force_ds_cpu_optimizer` is false: on a CPU-only node that swap buys nothing
  (the model is on the CPU already), so it is off there; on GPU nodes it stays on (CPUAdam is several
  times faster than torch AdamW on offloaded states).

Pure: no torch, no deepspeed import (the dry run never imports torch). `deepspeed_validate` below is
the one function that imports DeepSpeed, for tests and the training process only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from launcher.plan import Plan
from launcher.recipe.schema import Recipe

FILE_NAME = "deepspeed.json"

# Every top-level key DeepSpeed 0.19.8's DeepSpeedConfig reads (recorded by reading a config through a
# dict that logs each key looked up; tests/test_deepspeed_config.py re-records it against the installed
# DeepSpeed), plus KNOWN_ELSEWHERE. DeepSpeed silently ignores any other top-level key, so a typo
# there ("gradient_cliping") would be a setting that quietly does nothing: refused instead.
# Read outside DeepSpeedConfig._initialize_params: by DeepSpeedConfig.__init__, and by accelerate (MS-AMP).
KNOWN_ELSEWHERE = frozenset({"sequence_parallel_size", "msamp"})
KNOWN_TOP_LEVEL_KEYS = frozenset(
    {
        "activation_checkpointing", "aio", "amp", "autotuning", "bf16", "bfloat16", "checkpoint", "comet",
        "comms_logger", "communication_data_type", "compile", "compression_training", "csv_monitor",
        "curriculum_learning", "data_efficiency", "data_types", "dataloader_drop_last", "datastates_ckpt",
        "disable_allgather", "disable_python_gc", "dump_state", "eigenvalue", "elasticity", "expert_parallel",
        "flops_profiler", "fp16", "gradient_accumulation_steps", "gradient_allreduce_op", "gradient_clipping",
        "gradient_predivide_factor", "graph_harvesting", "hybrid_engine", "log_level",
        "managed_gradient_accumulation", "memory_breakdown", "nebula", "optimizer", "pipeline",
        "prescale_gradients", "progressive_layer_drop", "quantize_training", "scheduler",
        "seq_parallel_communication_data_type", "sparse_attention", "sparse_gradients", "steps_per_print",
        "tensor_parallel", "tensorboard", "timers", "torch_autocast", "train_batch_size",
        "train_micro_batch_size_per_gpu", "use_data_before_expert_parallelism", "vocabulary_size",
        "wall_clock_breakdown", "wandb", "weight_quantization", "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer", "zero_optimization",
    }
) | KNOWN_ELSEWHERE  # fmt: skip

STEPS_PER_PRINT = 1_000_000_000  # DeepSpeed's own progress lines would interleave with ftlaunch's records

# Buckets, in elements. ZeRO 1/2: DeepSpeed's examples' 2e8 (fewer, larger collectives; about 0.8 GB
# of fp32 staging per bucket). ZeRO 3: DeepSpeed's defaults (accelerate's "auto" would scale them with
# the model's hidden size, which the dry run does not load).
ZERO12_BUCKET = 200_000_000
ZERO3_BUCKET = 50_000_000
ZERO3_PARAM_PERSISTENCE = 100_000  # parameters smaller than this stay unpartitioned (biases, LayerNorm)
ZERO3_MAX_LIVE = 1_000_000_000
ZERO3_SUB_GROUP = 1_000_000_000

FP16_LOSS_SCALING = {
    "loss_scale": 0,  # 0 = dynamic
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}


class DeepSpeedConfigMismatch(ValueError):
    """A deepspeed.json that contradicts the plan (e.g. hand-edited in a run dir). One line."""


def deepspeed_config(plan: Plan, recipe: Recipe) -> dict[str, Any]:
    """Recipe + plan -> the DeepSpeed config dict (only meaningful when plan.backend is deepspeed)."""
    dist, train = recipe.distributed, recipe.train
    stage = plan.zero_stage
    on_gpu = plan.device == "cuda"
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "train_batch_size": plan.effective_batch_size,
        "gradient_clipping": float(train.max_grad_norm) if train.max_grad_norm else 0.0,
        "zero_optimization": _zero(stage, dist.offload_optimizer, dist.offload_params, pin_memory=on_gpu),
        "bf16": {"enabled": plan.precision == "bf16"},
        "fp16": {"enabled": True, **FP16_LOSS_SCALING} if plan.precision == "fp16" else {"enabled": False},
        "zero_allow_untested_optimizer": True,  # the client optimizer is torch.optim.AdamW
    }
    if dist.offload_optimizer:
        config["zero_force_ds_cpu_optimizer"] = on_gpu
    config["steps_per_print"] = STEPS_PER_PRINT
    config["wall_clock_breakdown"] = False
    return config


def _zero(stage: int, offload_optimizer: bool, offload_params: bool, pin_memory: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        zero.update(
            allgather_partitions=True,
            allgather_bucket_size=ZERO12_BUCKET,
            overlap_comm=True,
            reduce_scatter=True,
            reduce_bucket_size=ZERO12_BUCKET,
            contiguous_gradients=True,
        )
    elif stage == 3:
        zero.update(
            overlap_comm=True,
            contiguous_gradients=True,
            reduce_bucket_size=ZERO3_BUCKET,
            stage3_prefetch_bucket_size=ZERO3_BUCKET,
            stage3_param_persistence_threshold=ZERO3_PARAM_PERSISTENCE,
            stage3_max_live_parameters=ZERO3_MAX_LIVE,
            stage3_max_reuse_distance=ZERO3_MAX_LIVE,
            sub_group_size=ZERO3_SUB_GROUP,
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload_optimizer and stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return zero


def render_deepspeed_config(plan: Plan, recipe: Recipe) -> str:
    config = deepspeed_config(plan, recipe)
    check_deepspeed_config(plan, config, recipe)  # the renderer's own output must pass its own check
    return json.dumps(config, indent=2) + "\n"


# ------------------------------------------------------------------------------------------- checks


def deepspeed_config_problems(plan: Plan, config: dict, recipe: Recipe | None = None) -> list[str]:
    """What in `config` contradicts the plan (and the recipe, when given), one phrase per problem."""
    problems: list[str] = []
    if not isinstance(config, dict):
        return [f"expected a JSON object, got {type(config).__name__}"]
    unknown = sorted(set(config) - KNOWN_TOP_LEVEL_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(map(repr, unknown))} (DeepSpeed would ignore them)")
    autos = [path for path, value in _leaves(config) if value == "auto"]
    if autos:
        problems.append(f"'auto' left in {', '.join(autos)} (every value must be explicit)")
    for block in ("optimizer", "scheduler"):
        if block in config:
            problems.append(f"remove the {block!r} block (the entrypoint builds torch AdamW and the transformers scheduler)")

    micro = config.get("train_micro_batch_size_per_gpu")
    accumulation = config.get("gradient_accumulation_steps")
    total = config.get("train_batch_size")
    for key, value, planned in (
        ("train_micro_batch_size_per_gpu", micro, plan.per_device_batch_size),
        ("gradient_accumulation_steps", accumulation, plan.gradient_accumulation_steps),
        ("train_batch_size", total, plan.effective_batch_size),
    ):
        if not _is_int(value):
            problems.append(f"{key} must be an integer (got {value!r})")
        elif value != planned:
            problems.append(f"{key} is {value} but the plan has {planned}")
    if all(_is_int(v) for v in (micro, accumulation, total)) and total != micro * accumulation * plan.world_size:
        problems.append(
            f"train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x gradient_accumulation_steps "
            f"{accumulation} x world size {plan.world_size} (= {micro * accumulation * plan.world_size})"
        )

    zero = config.get("zero_optimization")
    if not isinstance(zero, dict):
        problems.append("zero_optimization block missing (accelerate requires it)")
    else:
        stage = zero.get("stage")
        if stage != plan.zero_stage:
            problems.append(f"zero_optimization.stage is {stage!r} but the plan has {plan.zero_stage}")
        if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
            problems.append(
                "zero_optimization.stage3_gather_16bit_weights_on_model_save must be true with stage 3 "
                "(the final model save gathers the shards)"
            )
        if recipe is not None:
            dist = recipe.distributed
            for key, field, wanted in (
                ("offload_optimizer", "offload_optimizer", dist.offload_optimizer),
                ("offload_param", "offload_params", dist.offload_params),
            ):
                block = zero.get(key)
                device = block.get("device", "none") if isinstance(block, dict) else "none"
                if (device not in ("none", None)) != wanted:
                    problems.append(f"zero_optimization.{key}.device is {device!r} but distributed.{field} is {wanted}")

    fp16 = _enabled(config.get("fp16"))
    bf16 = _enabled(config.get("bf16")) or _enabled(config.get("bfloat16"))
    if fp16 and bf16:
        problems.append("fp16.enabled and bf16.enabled are both true (pick one precision)")
    elif (fp16, bf16) != (plan.precision == "fp16", plan.precision == "bf16"):
        shown = "fp16" if fp16 else "bf16" if bf16 else "no"
        problems.append(f"fp16/bf16 blocks give precision {shown!r} but train.precision is {plan.precision!r}")

    if recipe is not None:
        clip = config.get("gradient_clipping", 0.0)
        wanted = float(recipe.train.max_grad_norm or 0.0)
        if not isinstance(clip, (int, float)) or isinstance(clip, bool) or float(clip) != wanted:
            problems.append(f"gradient_clipping is {clip!r} but train.max_grad_norm gives {wanted}")
    return problems


def check_deepspeed_config(plan: Plan, config: dict, recipe: Recipe | None = None, source: str = FILE_NAME) -> None:
    """Raise DeepSpeedConfigMismatch (one line, naming the fields) if `config` contradicts the plan."""
    problems = deepspeed_config_problems(plan, config, recipe)
    if problems:
        raise DeepSpeedConfigMismatch(f"{source}: " + "; ".join(problems))


def load_deepspeed_config(path, plan: Plan, recipe: Recipe | None = None) -> dict:
    """Read a run dir's deepspeed.json and check it against the plan (what every rank does first)."""
    from pathlib import Path

    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeepSpeedConfigMismatch(f"{path}: missing (distributed.backend is deepspeed)") from None
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigMismatch(f"{path}: not valid JSON ({exc})") from None
    check_deepspeed_config(plan, config, recipe, source=str(path))
    return config


def deepspeed_validate(config: dict, world_size: int):
    """DeepSpeed's own validation (DeepSpeedConfig) as `world_size` ranks would run it.

    Imports deepspeed (and so torch): for tests and the training process, never the dry run.
    Returns the DeepSpeedConfig; raises DeepSpeedConfigMismatch with DeepSpeed's message on one line."""
    import copy
    from unittest import mock

    from deepspeed.runtime import config as ds_config

    # Outside a process group DeepSpeedConfig assumes world size 1; check the batch arithmetic
    # against the planned world instead.
    with mock.patch.object(ds_config.dist, "get_rank", return_value=0), mock.patch.object(
        ds_config.dist, "get_world_size", return_value=world_size
    ):
        try:
            return ds_config.DeepSpeedConfig(copy.deepcopy(config))
        except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, AssertionError, DeepSpeedConfigError
            message = " ".join(str(exc).split())
            raise DeepSpeedConfigMismatch(f"DeepSpeed rejects the config: {type(exc).__name__}: {message}") from None


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}.{index}")
    else:
        yield prefix, value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _enabled(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    return str(block.get("enabled", False)).lower() == "true"
