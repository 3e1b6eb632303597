"""Rules that involve more than one field (types and ranges are checked by the schema).

Each rule yields (dotted field path, message) so the error points at the field to change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from launcher.plan.tpu import tpu_problems
from launcher.recipe.schema import CLASSIFICATION_METRICS, REGRESSION_METRICS, Recipe
from launcher.secrets import looks_secret, secret_argument

Problem = tuple[str, str]

EXTENSION_FORMATS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
# Slurm --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_SLURM_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASSIGNED = re.compile(r"(?<![\w$])([A-Za-z_]\w*)=")  # NAME= in a shell line (export NAME=..., NAME=... cmd)


def check(recipe: Recipe) -> list[Problem]:
    if recipe.entrypoint is not None:
        # The user's own script: model, data, metrics and the optimisation settings are not ftlaunch's
        # to check (the plan lists the ones set as unused); what launches it still is.
        return [*_entrypoint(recipe), *_distributed(recipe), *_cluster(recipe)]
    return [*_data(recipe), *_train(recipe), *_metrics(recipe), *_distributed(recipe), *_cluster(recipe)]


def _entrypoint(recipe: Recipe) -> Iterator[Problem]:
    script = Path(recipe.entrypoint.script).expanduser()
    if not script.exists():
        yield "entrypoint.script", f"script not found: {script}"
    elif not script.is_file():
        yield "entrypoint.script", f"not a file: {script}"
    elif script.suffix != ".py":
        yield "entrypoint.script", f"{script.name} is not a Python file (.py): accelerate launch runs it with python"
    carrier = secret_argument(recipe.entrypoint.args)
    if carrier:
        yield "entrypoint.args", (
            f"{carrier} passes a credential on the command line, which the run dir would record (plan.json): "
            "read it from the environment in your script instead; ftlaunch passes the environment through"
        )


def file_format(path: str, declared: str | None) -> str | None:
    if declared:
        return declared
    suffix = Path(path).suffix.lower()
    return EXTENSION_FORMATS.get(suffix)


def _data(recipe: Recipe) -> Iterator[Problem]:
    data = recipe.data
    if data.dataset and data.files:
        yield "data.files", "set either data.dataset (a Hub dataset) or data.files (local files), not both"
    if not data.dataset and not data.files:
        yield "data.dataset", "no data: set data.dataset (e.g. glue with config mrpc) or data.files"
    if data.config and not data.dataset:
        yield "data.config", "data.config names a Hub dataset config; it needs data.dataset"
    needed = [data.train_split] + ([data.eval_split] if data.eval_split and recipe.train.eval_strategy != "no" else [])
    if data.files:
        for split in needed:
            if split not in data.files:
                yield f"data.files.{split}", f"no file for split {split!r} (have: {', '.join(sorted(data.files))})"
        formats = set()
        for split, path in data.files.items():
            fmt = file_format(path, data.format)
            if fmt is None:
                yield f"data.files.{split}", f"cannot tell the format of {path!r}: set data.format (json, csv, tsv, parquet)"
            else:
                formats.add(fmt)
            if not Path(path).expanduser().is_file():
                yield f"data.files.{split}", f"file not found: {path}"
        if len(formats) > 1:
            yield "data.files", f"all splits must share one format, got {', '.join(sorted(formats))}"
    if data.format and not data.files:
        yield "data.format", "data.format applies to data.files only"
    if data.pad_to_multiple_of and data.padding == "max_length":
        if data.max_length % data.pad_to_multiple_of:
            yield "data.pad_to_multiple_of", (
                f"max_length {data.max_length} is not a multiple of {data.pad_to_multiple_of}"
            )
    if len(set(data.text_fields)) != len(data.text_fields):
        yield "data.text_fields", "the two text fields are the same"


def _train(recipe: Recipe) -> Iterator[Problem]:
    train = recipe.train
    if train.warmup_steps and train.warmup_ratio:
        yield "train.warmup_ratio", "set warmup_steps or warmup_ratio, not both"
    if train.eval_strategy == "steps" and not train.eval_steps:
        yield "train.eval_steps", "eval_strategy is 'steps': set eval_steps"
    if train.eval_steps and train.eval_strategy != "steps":
        yield "train.eval_steps", f"eval_steps is only used with eval_strategy: steps (it is {train.eval_strategy!r})"
    if train.eval_strategy != "no" and not recipe.data.eval_split:
        yield "data.eval_split", f"train.eval_strategy is {train.eval_strategy!r} but there is no eval split"
    if train.save_strategy == "steps" and not train.save_steps:
        yield "train.save_steps", "save_strategy is 'steps': set save_steps"
    if train.save_steps and train.save_strategy != "steps":
        yield "train.save_steps", f"save_steps is only used with save_strategy: steps (it is {train.save_strategy!r})"
    if len(set(train.report_to)) != len(train.report_to):
        yield "train.report_to", "a tracker is listed twice"
    if train.cpu_linear == "onednn" and train.precision != "no":
        yield "train.cpu_linear", (f"onednn applies to fp32 (precision: no); with {train.precision} autocast picks "
                                   "the kernels: use auto")  # fmt: skip
    if train.cpu_linear == "onednn" and recipe.distributed.backend != "ddp":
        yield "train.cpu_linear", "onednn applies under distributed.backend: ddp (DeepSpeed runs its own linear layers)"


def _metrics(recipe: Recipe) -> Iterator[Problem]:
    regression = recipe.model.num_labels == 1
    allowed = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    for index, metric in enumerate(recipe.metrics):
        if metric not in allowed:
            kind = "regression (num_labels: 1)" if regression else f"classification (num_labels: {recipe.model.num_labels})"
            yield f"metrics.{index}", f"{metric!r} does not apply to {kind}; use one of {', '.join(allowed)}"
    if len(set(recipe.metrics)) != len(recipe.metrics):
        yield "metrics", "a metric is listed twice"


def _distributed(recipe: Recipe) -> Iterator[Problem]:
    dist = recipe.distributed
    if dist.backend != "deepspeed":
        for name in ("zero_stage", "offload_optimizer", "offload_params"):
            if getattr(dist, name) not in (None, False):
                yield f"distributed.{name}", "only used with distributed.backend: deepspeed"
        return
    stage = dist.stage
    if stage not in (0, 1, 2, 3):
        yield "distributed.zero_stage", f"ZeRO stage must be 0, 1, 2 or 3 (got {stage})"
        return
    if dist.offload_optimizer and stage == 0:
        yield "distributed.offload_optimizer", "optimizer offload needs ZeRO stage 1, 2 or 3 (zero_stage is 0)"
    if dist.offload_params and stage != 3:
        yield "distributed.offload_params", f"parameter offload needs ZeRO stage 3 (zero_stage is {stage})"


def _cluster(recipe: Recipe) -> Iterator[Problem]:
    cluster = recipe.cluster
    if not _SLURM_TIME.match(cluster.time):
        yield "cluster.time", f"{cluster.time!r} is not a Slurm time (use HH:MM:SS, D-HH:MM:SS or minutes)"
    for name in cluster.env:
        if not _ENV_NAME.match(name):
            yield f"cluster.env.{name}", "not a valid environment variable name"
        elif looks_secret(name):
            yield f"cluster.env.{name}", "secrets do not belong in a recipe: export it in your shell, ftlaunch passes it through"
    for index, line in enumerate(cluster.setup):
        named = [name for name in _ASSIGNED.findall(line) if looks_secret(name)]
        if named:
            yield f"cluster.setup.{index}", (
                f"sets {named[0]}, a credential, which sbatch.sh would record: export it in your shell before "
                "submitting (ftlaunch passes it through)"
            )
    if cluster.container and cluster.container.runtime == "apptainer":
        image = cluster.container.image
        if image.endswith(".sif") and "://" not in image and not Path(image).expanduser().is_file():
            yield "cluster.container.image", f"Apptainer image not found: {image}"
    yield from tpu_problems(recipe)
