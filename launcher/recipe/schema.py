"""The recipe: one typed description of a fine-tuning job.

Every section forbids unknown keys, so a typo (`lr_rate`) is an error, not a silently ignored
setting. Rules that involve several fields live in `rules.py`, where each problem is reported
with the exact field it concerns.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

NonEmptyStr = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]

# transformers.SchedulerType values (kept here so validating a recipe never imports transformers)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)

# Metrics computed offline by launcher.train.metrics (no metric script is fetched from the Hub).
CLASSIFICATION_METRICS = ("accuracy", "f1", "precision", "recall", "matthews_correlation")
REGRESSION_METRICS = ("pearson", "spearmanr", "mse")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


def metric_goal(name: str) -> Literal["min", "max"]:
    """Whether a lower or a higher value of a metric is better; `name` may carry its split
    (validation_mse, validation_loss): losses and errors go down, scores go up."""
    return "min" if name.lower().endswith(("loss", "mse")) else "max"


DATA_FORMATS = ("json", "csv", "tsv", "parquet")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(Section):
    name_or_path: NonEmptyStr = Field(description="Hub id (bert-base-uncased) or a local model directory")
    num_labels: int = Field(2, ge=1, description="classes; 1 means regression (e.g. STS-B)")
    tokenizer: NonEmptyStr | None = Field(None, description="tokenizer id or dir; defaults to the model's")
    revision: NonEmptyStr | None = Field(None, description="Hub revision (branch, tag or commit)")
    hub_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="layers swapped for Hub kernels (transformers' use_kernels, its default from 5.25): "
        "auto = transformers' default, off on XLA (the kernels package has no XLA device); on/off force it",
    )


class DataSpec(Section):
    dataset: NonEmptyStr | None = Field(None, description="Hub dataset id, e.g. glue or nyu-mll/glue")
    config: NonEmptyStr | None = Field(None, description="Hub dataset config, e.g. mrpc")
    files: dict[str, NonEmptyStr] | None = Field(None, description="local files per split: {train: path, validation: path}")
    format: Literal["json", "csv", "tsv", "parquet"] | None = Field(None, description="file format; inferred from the extension")
    train_split: NonEmptyStr = Field("train", description="split to train on")
    eval_split: NonEmptyStr | None = Field("validation", description="split to evaluate on; null for none")
    text_fields: list[NonEmptyStr] = Field(
        ..., min_length=1, max_length=2, description="one field (single sentences) or two (sentence pairs)"
    )
    label_field: NonEmptyStr = Field("label", description="field holding the label (renamed to labels)")
    max_length: int = Field(128, ge=8, le=65536, description="truncate to this many tokens")
    padding: Literal["dynamic", "max_length"] = Field(
        "dynamic", description="dynamic: pad per batch; max_length: every batch exactly max_length (TPU shapes)"
    )
    pad_to_multiple_of: int | None = Field(None, ge=1, description="round dynamic padding up (8 suits tensor cores)")
    group_by_length: bool = Field(
        False, description="batch training rows of similar length together (less padding); reshuffled every epoch"
    )
    length_window: int = Field(
        8, ge=1, description="with group_by_length: sort rows by length within windows of this many global "
        "batches of a shuffle (small: batches stay random; large: less padding)",
    )
    max_train_samples: int | None = Field(None, ge=1, description="use only the first N training rows")
    max_eval_samples: int | None = Field(None, ge=1, description="use only the first N evaluation rows")
    cache_dir: NonEmptyStr | None = Field(None, description="datasets cache dir (default: HF_DATASETS_CACHE)")


class TrainSpec(Section):
    epochs: int = Field(3, ge=1, description="passes over the training split")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    per_device_batch_size: int = Field(8, ge=1, description="micro-batch per process")
    eval_batch_size: int | None = Field(None, ge=1, description="per device; defaults to 2x per_device_batch_size")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(5e-5, gt=0, le=1, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not on biases and LayerNorm)")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon")
    scheduler: Literal[SCHEDULERS] = Field("linear", description="transformers.get_scheduler name")  # type: ignore[valid-type]
    warmup_steps: int = Field(0, ge=0, description="linear warmup, in optimizer steps")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a fraction of all steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; null disables it")
    seed: int = Field(42, ge=0, description="seeds model init, shuffling and dropout on every rank")
    precision: Literal["no", "fp16", "bf16"] = Field("no", description="mixed precision")
    cpu_linear: Literal["auto", "onednn", "aten"] = Field(
        "auto", description="fp32 on CPU: linear layers through oneDNN or torch's default BLAS (MKL); "
        "auto: oneDNN on CPUs with AVX-512 that are not Intel's, where MKL skips its AVX-512 kernels",
    )
    cpu_dropout: Literal["auto", "numpy", "torch"] = Field(
        "auto", description="on CPU: dropout masks from numpy's SFC64 generator (5x faster to draw) or torch's "
        "Bernoulli kernel; auto: numpy on CPU (GPUs and TPUs always draw their own)",
    )
    packed_sequences: Literal["auto", "off"] = Field(
        "auto", description="on CPU with dynamic padding: the encoder runs on each training batch's real tokens "
        "only, its last layer on each row's first token only (what the classifier reads) (same rows, same math; "
        "BERT sequence classifiers, checked at setup); off: padded batches",
    )
    eval_strategy: Literal["epoch", "steps", "no"] = Field("epoch", description="when to evaluate (always also at the end)")
    eval_steps: int | None = Field(None, ge=1, description="with eval_strategy: steps")
    save_strategy: Literal["epoch", "steps", "no"] = Field("epoch", description="when to write a checkpoint")
    save_steps: int | None = Field(None, ge=1, description="with save_strategy: steps")
    save_total_limit: int = Field(
        2, ge=1, description="newest checkpoints kept; the best one by the first metric is kept as well"
    )
    logging_steps: int = Field(10, ge=1, description="optimizer steps between metric records")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="experiment trackers (accelerate's); wandb and mlflow need pip install 'ftlaunch[trackers]'",
    )


DEFAULT_ZERO_STAGE = 2


class DistributedSpec(Section):
    backend: Literal["ddp", "deepspeed"] = Field("ddp", description="DistributedDataParallel or DeepSpeed ZeRO")
    zero_stage: int | None = Field(None, description=f"DeepSpeed ZeRO stage 0-3 (default {DEFAULT_ZERO_STAGE})")
    offload_optimizer: bool = Field(False, description="DeepSpeed: optimizer state in CPU memory (ZeRO 1-3)")
    offload_params: bool = Field(False, description="DeepSpeed: parameters in CPU memory (ZeRO 3)")
    timeout_s: int = Field(1800, ge=10, description="a collective that waits longer than this fails the job")
    join_timeout_s: int = Field(300, ge=1, description="every node must reach the head node within this")

    @property
    def stage(self) -> int | None:
        """The ZeRO stage that runs: zero_stage, or the default under DeepSpeed; None without DeepSpeed."""
        if self.backend != "deepspeed":
            return None
        return DEFAULT_ZERO_STAGE if self.zero_stage is None else self.zero_stage


class ContainerSpec(Section):
    image: NonEmptyStr = Field(..., description="Pyxis/enroot image (e.g. nvcr.io#...) or an Apptainer .sif path")
    runtime: Literal["pyxis", "apptainer"] = Field("pyxis", description="srun --container-image, or apptainer exec")
    mounts: list[NonEmptyStr] = Field(default_factory=list, description="SRC:DST bind mounts")


class TpuSpec(Section):
    name: NonEmptyStr = Field(..., description="the TPU VM or pod slice, as gcloud compute tpus tpu-vm create named it")
    zone: NonEmptyStr = Field(..., description="its zone, e.g. us-central2-b")
    type: NonEmptyStr = Field("v4-8", description="accelerator type, e.g. v4-32, v5litepod-16: gives hosts x chips")
    project: NonEmptyStr | None = Field(None, description="Google Cloud project (default: gcloud's core/project)")


class ClusterSpec(Section):
    # `time: 90` (minutes), `mem: 64000` and `env: {OMP_NUM_THREADS: 4}` are numbers in YAML; Slurm and
    # the environment want text, so numbers are taken as their text (booleans are still refused).
    model_config = ConfigDict(coerce_numbers_to_str=True)

    nodes: int = Field(1, ge=1, le=4096, description="nodes (local runs: launchers on this host)")
    min_nodes: int | None = Field(
        None, ge=1, description="Slurm: run on as few as this many nodes when no more are free (the global batch kept)"
    )
    gpus_per_node: int = Field(1, ge=0, le=64, description="0 trains on CPU (gloo)")
    accelerator: Literal["gpu", "tpu"] = Field(
        "gpu", description="gpu: CUDA GPUs, or CPU with gpus_per_node 0; tpu: a Cloud TPU over XLA (cluster.tpu)"
    )
    procs_per_node: int | None = Field(None, ge=1, le=256, description="defaults to gpus_per_node (1 on CPU)")
    cpus_per_task: int | None = Field(None, ge=1, description="Slurm --cpus-per-task for the one task per node")
    mem: NonEmptyStr | None = Field(None, description="memory per node, Slurm syntax (e.g. 64G)")
    partition: NonEmptyStr | None = Field(None, description="Slurm partition")
    account: NonEmptyStr | None = Field(None, description="Slurm account")
    qos: NonEmptyStr | None = Field(None, description="Slurm QOS")
    time: NonEmptyStr = Field("04:00:00", description="Slurm time limit ([D-]HH:MM:SS or minutes)")
    constraint: NonEmptyStr | None = Field(None, description="Slurm node features, e.g. a100")
    container: ContainerSpec | None = Field(None, description="run every node inside this image")
    tpu: TpuSpec | None = Field(None, description="the Cloud TPU VM or pod slice (with accelerator: tpu)")
    max_requeues: int = Field(3, ge=0, description="times a preempted job requeues itself")
    preempt_signal_s: int = Field(120, ge=10, description="seconds before the time limit Slurm warns the job")
    setup: list[NonEmptyStr] = Field(default_factory=list, description="shell lines run before launch (module load ...)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for every rank (no secrets)")
    sbatch_args: list[NonEmptyStr] = Field(default_factory=list, description="extra sbatch options, e.g. --exclusive")


class EntrypointSpec(Section):
    script: NonEmptyStr = Field(
        ..., description="your training script (.py): accelerate launch runs a copy of it (RUN/script/) on every node"
    )
    args: list[str] = Field(default_factory=list, description="command-line arguments for the script")


# Sections only the built-in trainer reads: required without `entrypoint`, optional (and ignored) with it.
BUILTIN_TRAINER_SECTIONS = ("model", "data")
REQUIRED_WITHOUT_ENTRYPOINT = {"required_without": "entrypoint"}


class Recipe(Section):
    name: NonEmptyStr = Field(..., max_length=128, description="job name; run dirs are named after it")
    model: ModelSpec | None = Field(None, description="what to fine-tune", json_schema_extra=REQUIRED_WITHOUT_ENTRYPOINT)
    data: DataSpec | None = Field(
        None, description="what to train and evaluate on", json_schema_extra=REQUIRED_WITHOUT_ENTRYPOINT
    )
    entrypoint: EntrypointSpec | None = Field(
        None, description="run your own script instead of the built-in trainer (model, data, metrics then unused)"
    )
    train: TrainSpec = Field(default_factory=TrainSpec, description="optimisation")
    metrics: list[Literal[METRICS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["accuracy"], min_length=1, description="computed offline on the eval split"
    )
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="how ranks cooperate")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="where it runs")
    output_dir: NonEmptyStr = Field("runs", description="run directories are created below this")

    @property
    def selection_metric(self) -> str | None:
        """The eval metric that picks the best checkpoint: the first of `metrics`, on the eval split."""
        if self.data is None or not self.data.eval_split:
            return None
        return f"{self.data.eval_split}_{self.metrics[0]}"

    @model_validator(mode="wrap")
    @classmethod
    def _builtin_trainer_needs_model_and_data(cls, data, handler):
        """Without `entrypoint`, `model` and `data` are required: reported as pydantic "missing"
        errors, together with every other schema error (one pass, like any required field)."""
        missing = []
        if isinstance(data, dict) and data.get("entrypoint") is None:
            missing = [name for name in BUILTIN_TRAINER_SECTIONS if data.get(name) is None]
        if not missing:
            return handler(data)
        errors = [{"type": "missing", "loc": (name,), "input": data} for name in missing]
        try:
            handler(data)
        except ValidationError as exc:
            errors += [
                {key: err[key] for key in ("type", "loc", "input", "ctx") if key in err}
                for err in exc.errors(include_url=False)
            ]
            order = list(cls.model_fields)
            errors.sort(key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order else len(order))
            try:
                combined = ValidationError.from_exception_data(cls.__name__, errors)
            except (KeyError, TypeError, ValueError):  # an error type that cannot be rebuilt: pydantic's own
                raise exc from None
            raise combined from None
        raise ValidationError.from_exception_data(cls.__name__, errors)
