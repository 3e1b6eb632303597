"""deepspeed.json: rendered from recipe + plan, byte-compared with goldens, accepted by DeepSpeed's own
config class, and refused (one line naming the fields) when it contradicts the plan.

Regenerate the goldens after an intended change and review the diff:

    FTL_UPDATE_GOLDENS=1 python -m pytest tests/test_deepspeed_config.py
    git diff tests/golden/deepspeed/
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftl_support import assert_matches_golden

from ftl_support import MRPC_RECIPE, REPO, ftlaunch, local_mrpc_overrides, only_run_dir
from launcher.plan import HostFacts, make_plan
from launcher.recipe.schema import Recipe
from launcher.render import render_files
from launcher.render.deepspeed_config import (
    KNOWN_ELSEWHERE,
    KNOWN_TOP_LEVEL_KEYS,
    DeepSpeedConfigMismatch,
    check_deepspeed_config,
    deepspeed_config,
    deepspeed_config_problems,
    deepspeed_validate,
    render_deepspeed_config,
)

GOLDEN = Path(__file__).resolve().parent / "golden" / "deepspeed"
RUN_DIR = "/runs/example"
HOST = HostFacts(gpus=0, python="/venv/bin/python")
MRPC_ROWS = {"train": 3668, "validation": 408}


def _recipe(distributed: dict, train: dict | None = None, cluster: dict | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "mrpc-ds",
            "model": {"name_or_path": "bert-base-uncased", "num_labels": 2},
            "data": {"dataset": "glue", "config": "mrpc", "text_fields": ["sentence1", "sentence2"]},
            "train": {"epochs": 3, "per_device_batch_size": 8, "gradient_accumulation_steps": 2,
                      "precision": "bf16", **(train or {})},
            "metrics": ["accuracy", "f1"],
            "distributed": {"backend": "deepspeed", **distributed},
            "cluster": cluster or {"nodes": 2, "gpus_per_node": 8},
        }
    )  # fmt: skip


# golden name -> (recipe, target); Slurm 2 nodes x 8 GPUs unless the name says cpu
CASES = {
    "zero1": (_recipe({"zero_stage": 1}), "slurm"),
    "zero2": (_recipe({"zero_stage": 2}), "slurm"),
    "zero3": (_recipe({"zero_stage": 3}), "slurm"),
    "zero3-offload": (_recipe({"zero_stage": 3, "offload_optimizer": True, "offload_params": True}), "slurm"),
    "zero2-fp16": (_recipe({"zero_stage": 2}, {"precision": "fp16", "max_grad_norm": 0.5}), "slurm"),
    "zero2-offload-cpu": (
        _recipe(
            {"zero_stage": 2, "offload_optimizer": True},
            {"precision": "no", "max_grad_norm": None, "gradient_accumulation_steps": 1},
            {"nodes": 1, "gpus_per_node": 0, "procs_per_node": 2},
        ),
        "local",
    ),
}


def _plan(case: str):
    recipe, target = CASES[case]
    return make_plan(recipe, target, RUN_DIR, HOST, MRPC_ROWS, local_port=29400 if target == "local" else None)


def _config(case: str) -> dict:
    return json.loads(render_deepspeed_config(_plan(case), CASES[case][0]))


# ------------------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str):
    assert_matches_golden(GOLDEN / f"{case}.json", render_deepspeed_config(_plan(case), CASES[case][0]))


def test_no_stray_goldens():
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(CASES)


def test_rendering_is_deterministic():
    for case in CASES:
        assert render_deepspeed_config(_plan(case), CASES[case][0]) == render_deepspeed_config(_plan(case), CASES[case][0])


# ------------------------------------------------------------------------ what the file says


@pytest.mark.parametrize("case", CASES)
def test_deepspeed_accepts_it_and_reads_what_the_plan_says(case: str):
    plan, recipe = _plan(case), CASES[case][0]
    config = _config(case)
    ds = deepspeed_validate(config, plan.world_size)  # DeepSpeed's own DeepSpeedConfig, at the planned world size
    assert ds.zero_optimization_stage == plan.zero_stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (
        plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.effective_batch_size,
    )  # fmt: skip
    assert ds.gradient_clipping == (recipe.train.max_grad_norm or 0.0)
    assert ds.bfloat16_config.enabled == (plan.precision == "bf16")
    assert ds.float16_config.enabled == (plan.precision == "fp16")
    offload = ds.zero_config.offload_optimizer
    assert (offload is not None and offload.device == "cpu") == recipe.distributed.offload_optimizer
    offload_param = ds.zero_config.offload_param
    assert (offload_param is not None and offload_param.device == "cpu") == recipe.distributed.offload_params
    assert ds.zero_config.gather_16bit_weights_on_model_save == (plan.zero_stage == 3)
    assert ds.optimizer_name is None and ds.scheduler_name is None  # the entrypoint's torch AdamW + scheduler
    assert ds.steps_per_print >= 10**9 and ds.wall_clock_breakdown is False


@pytest.mark.parametrize("case", CASES)
def test_every_value_is_explicit_and_every_key_known(case: str):
    config = _config(case)
    assert "auto" not in json.dumps(config)
    assert set(config) <= KNOWN_TOP_LEVEL_KEYS
    assert "optimizer" not in config and "scheduler" not in config
    assert deepspeed_config_problems(_plan(case), config, CASES[case][0]) == []


def test_fp16_has_dynamic_loss_scaling():
    fp16 = _config("zero2-fp16")["fp16"]
    assert fp16["enabled"] is True and fp16["loss_scale"] == 0 and fp16["initial_scale_power"] == 16
    assert _config("zero2-fp16")["bf16"] == {"enabled": False}


def test_offload_keeps_the_torch_adamw_on_cpu_nodes_only():
    """accelerate swaps a client AdamW for DeepSpeedCPUAdam (a ~50 s C++ build) under optimizer offload
    unless zero_force_ds_cpu_optimizer is false: false on CPU-only nodes, left on for GPU nodes."""
    cpu = _config("zero2-offload-cpu")
    assert cpu["zero_force_ds_cpu_optimizer"] is False
    assert cpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    gpu = _config("zero3-offload")
    assert gpu["zero_force_ds_cpu_optimizer"] is True
    assert gpu["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert "zero_force_ds_cpu_optimizer" not in _config("zero2")


@pytest.mark.parametrize(
    ("nodes", "procs", "micro", "accumulation"), [(1, 1, 8, 1), (1, 2, 4, 3), (2, 1, 16, 2), (4, 8, 2, 4)]
)
def test_batch_arithmetic_agrees_by_construction(nodes, procs, micro, accumulation):
    recipe = _recipe(
        {"zero_stage": 2},
        {"per_device_batch_size": micro, "gradient_accumulation_steps": accumulation, "precision": "no"},
        {"nodes": nodes, "gpus_per_node": 0, "procs_per_node": procs},
    )
    plan = make_plan(recipe, "slurm", RUN_DIR, HOST, MRPC_ROWS)
    config = deepspeed_config(plan, recipe)
    assert config["train_batch_size"] == micro * accumulation * nodes * procs == plan.effective_batch_size
    assert deepspeed_validate(config, plan.world_size).train_batch_size == plan.effective_batch_size


def test_known_top_level_keys_are_the_ones_deepspeed_reads():
    """Re-record which top-level keys the installed DeepSpeed's DeepSpeedConfig looks up: a DeepSpeed
    upgrade that adds or drops one shows up here, not as a silently ignored setting."""
    from deepspeed.runtime.config import DeepSpeedConfig

    seen: set[str] = set()

    class Keys:
        def __init__(self, data):
            self.data = data

        def __contains__(self, key):
            seen.add(key)
            return key in self.data

        def __iter__(self):
            return iter(self.data)

    class Spy(dict):
        def get(self, key, *default):
            seen.add(key)
            return super().get(key, *default)

        def __contains__(self, key):
            seen.add(key)
            return super().__contains__(key)

        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

        def keys(self):
            return Keys(dict(self))

        def __copy__(self):
            return self

    DeepSpeedConfig(Spy({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {}}))
    assert KNOWN_TOP_LEVEL_KEYS - KNOWN_ELSEWHERE == seen


# --------------------------------------------------------------------------------- bad input


def _mrpc_dry_run_error(*sets: str) -> list[str]:
    args = ["validate", MRPC_RECIPE, "--set", "distributed.backend=deepspeed"]
    for item in sets:
        args += ["--set", item]
    result = ftlaunch(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr.strip().splitlines()


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["distributed.zero_stage=4"], "distributed.zero_stage: ZeRO stage must be 0, 1, 2 or 3 (got 4)"),
        (["distributed.zero_stage=0", "distributed.offload_optimizer=true"],
         "distributed.offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3 (zero_stage is 0)"),
        (["distributed.zero_stage=2", "distributed.offload_params=true"],
         "distributed.offload_params: parameter offload needs ZeRO stage 3 (zero_stage is 2)"),
        # one precision field: "fp16 and bf16 together" cannot even be written down
        (["train.precision=fp16,bf16"], "train.precision: Input should be 'no', 'fp16' or 'bf16'"),
        (["train.precision=[fp16, bf16]"], "train.precision: Input should be 'no', 'fp16' or 'bf16'"),
    ],
)  # fmt: skip
def test_bad_deepspeed_input_is_one_line_naming_the_field(sets, expected):
    lines = _mrpc_dry_run_error(*sets)
    assert len(lines) == 1, lines
    assert lines[0].startswith("ftlaunch: error: --set ") and expected in lines[0], lines


def test_deepspeed_itself_rejects_what_it_must():
    good = _config("zero2")
    for mutate, needle in [
        (lambda c: c["zero_optimization"].update(stage=4), "stage"),
        (lambda c: c["zero_optimization"].update(overlap_comms=True), "overlap_comms"),  # typo inside zero_optimization
        (lambda c: c["fp16"].update(enabled=True), "bfloat16 and fp16"),
        (lambda c: c.update(train_micro_batch_size_per_gpu="auto"), "TypeError"),  # obscure: see below
    ]:
        config = copy.deepcopy(good)
        mutate(config)
        with pytest.raises(DeepSpeedConfigMismatch) as info:
            deepspeed_validate(config, 16)
        assert needle in str(info.value) and "\n" not in str(info.value)
    # DeepSpeed's own word on a leftover "auto" is "'>' not supported between 'str' and 'int'": ours names it
    with pytest.raises(DeepSpeedConfigMismatch, match=r"'auto' left in train_micro_batch_size_per_gpu"):
        check_deepspeed_config(_plan("zero2"), {**good, "train_micro_batch_size_per_gpu": "auto"})


def test_unknown_top_level_keys_pass_deepspeed_but_not_our_check():
    config = {**_config("zero2"), "gradient_cliping": 1.0}
    deepspeed_validate(config, 16)  # DeepSpeed silently ignores it...
    with pytest.raises(DeepSpeedConfigMismatch, match=r"unknown top-level key\(s\) 'gradient_cliping'"):
        check_deepspeed_config(_plan("zero2"), config)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"train_batch_size": 128},
         "train_batch_size is 128 but the plan has 256; train_batch_size 128 != train_micro_batch_size_per_gpu 8 x "
         "gradient_accumulation_steps 2 x world size 16 (= 256)"),
        ({"train_micro_batch_size_per_gpu": 4, "train_batch_size": 128},
         "train_micro_batch_size_per_gpu is 4 but the plan has 8; train_batch_size is 128 but the plan has 256"),
        ({"gradient_accumulation_steps": 1},
         "gradient_accumulation_steps is 1 but the plan has 2; train_batch_size 256 != train_micro_batch_size_per_gpu 8 x "
         "gradient_accumulation_steps 1 x world size 16 (= 128)"),
        ({"zero_optimization": {"stage": 3}},
         "zero_optimization.stage is 3 but the plan has 2; zero_optimization.stage3_gather_16bit_weights_on_model_save "
         "must be true with stage 3"),
        ({"bf16": {"enabled": False}}, "fp16/bf16 blocks give precision 'no' but train.precision is 'bf16'"),
        ({"fp16": {"enabled": True}}, "fp16.enabled and bf16.enabled are both true"),
        ({"gradient_clipping": 0.5}, "gradient_clipping is 0.5 but train.max_grad_norm gives 1.0"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}},
         "'auto' left in optimizer.params.lr (every value must be explicit); remove the 'optimizer' block"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
         "zero_optimization.offload_optimizer.device is 'cpu' but distributed.offload_optimizer is False"),
    ],
)  # fmt: skip
def test_a_config_that_contradicts_the_plan_is_refused_in_one_line(edit, message):
    config = {**_config("zero2"), **edit}
    with pytest.raises(DeepSpeedConfigMismatch) as info:
        check_deepspeed_config(_plan("zero2"), config, CASES["zero2"][0])
    text = str(info.value)
    assert text.startswith("deepspeed.json: ") and "\n" not in text
    assert message in text, text


# ------------------------------------------------------------------------- render_files + dry run


def test_render_files_adds_deepspeed_json_only_for_deepspeed_with_a_recipe():
    recipe, plan = CASES["zero3"][0], _plan("zero3")
    files = render_files(plan, recipe)
    assert files["deepspeed.json"] == render_deepspeed_config(plan, recipe)
    assert "deepspeed.json" not in render_files(plan)  # no recipe: no max_grad_norm / offload to render from
    ddp = Recipe.model_validate({**recipe.model_dump(), "distributed": {"backend": "ddp"}})
    assert "deepspeed.json" not in render_files(make_plan(ddp, "slurm", RUN_DIR, HOST, MRPC_ROWS), ddp)


def test_dry_run_writes_and_prints_deepspeed_json_without_importing_torch(tmp_path, tiny_model_dir, mrpc_dir):
    out = tmp_path / "runs"
    args = ["submit", str(MRPC_RECIPE), "--local", "--procs-per-node", "2", "--dry-run",
            "--set", "distributed.backend=deepspeed", "--set", "distributed.zero_stage=3",
            *map(str, local_mrpc_overrides(tiny_model_dir, mrpc_dir, out))]  # fmt: skip
    probe = (
        "import sys; from launcher.cli.main import main; code = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'deepspeed', 'transformers', 'accelerate') if m in sys.modules); "
        "print('HEAVY', heavy); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout[-500:]
    assert "deepspeed.json" in result.stdout and '"stage3_gather_16bit_weights_on_model_save": true' in result.stdout
    run_dir = only_run_dir(out)
    written = json.loads((run_dir / "deepspeed.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    assert written["train_batch_size"] == plan["effective_batch_size"] == 8
    assert written["zero_optimization"]["stage"] == 3
    accelerate_yaml = (run_dir / "accelerate.yaml").read_text()
    assert f"deepspeed_config_file: {run_dir}/deepspeed.json" in accelerate_yaml
