"""Rendered files for fixed inputs, compared byte for byte with the goldens in tests/golden/<case>/.

Inputs are fixed so the output is too: run dir /runs/example, HostFacts(gpus=0,
python="/venv/bin/python"), local port 29400 for local targets, fixed row counts.

After an intended change to the plan or a renderer, regenerate the goldens and review the diff:

    FTL_UPDATE_GOLDENS=1 python -m pytest tests/test_render.py
    git diff tests/golden/

Every rendered accelerate.yaml is also read back with accelerate's own loader, which is what
`accelerate launch --config_file` uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl_support import assert_matches_golden
import yaml

from launcher.plan import HostFacts, Plan, make_plan
from launcher.recipe.schema import Recipe
from launcher.render import render_files

GOLDEN = Path(__file__).resolve().parent / "golden"
RUN_DIR = "/runs/example"
HOST = HostFacts(gpus=0, python="/venv/bin/python")
LOCAL_PORT = 29400
MRPC_ROWS = {"train": 3668, "validation": 408}


def _recipe(name: str, train: dict, cluster: dict, distributed: dict | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": name,
            "model": {"name_or_path": "bert-base-uncased", "num_labels": 2},
            "data": {"dataset": "glue", "config": "mrpc", "text_fields": ["sentence1", "sentence2"]},
            "train": {"epochs": 3, "per_device_batch_size": 8, **train},
            "metrics": ["accuracy", "f1"],
            "distributed": distributed or {"backend": "ddp"},
            "cluster": cluster,
        }
    )


# case -> (recipe, target, rows, expected accelerate settings)
CASES = {
    "cpu-local-1proc": (
        _recipe("mrpc-cpu", {"precision": "no", "warmup_ratio": 0.1}, {"nodes": 1, "gpus_per_node": 0}),
        "local",
        MRPC_ROWS,
        {"distributed_type": "NO", "num_processes": 1, "num_machines": 1, "mixed_precision": "no"},
    ),
    "cpu-local-2proc": (
        _recipe("mrpc-cpu-2", {"precision": "bf16"}, {"nodes": 1, "gpus_per_node": 0, "procs_per_node": 2}),
        "local",
        MRPC_ROWS,
        {"distributed_type": "MULTI_GPU", "num_processes": 2, "num_machines": 1, "mixed_precision": "bf16"},
    ),
    "slurm-2x4-gpu": (
        _recipe(
            "mrpc-2x4",
            {"precision": "fp16", "gradient_accumulation_steps": 2},
            {"nodes": 2, "gpus_per_node": 4, "time": "01:00:00"},
        ),
        "slurm",
        MRPC_ROWS,
        {"distributed_type": "MULTI_GPU", "num_processes": 8, "num_machines": 2, "mixed_precision": "fp16"},
    ),
    "slurm-2x8-deepspeed-zero3": (
        _recipe(
            "mrpc-ds3",
            {"precision": "bf16"},
            {"nodes": 2, "gpus_per_node": 8},
            {"backend": "deepspeed", "zero_stage": 3, "offload_params": True},
        ),
        "slurm",
        {},  # Hub dataset: rows known at run time
        # precision goes in deepspeed.json: accelerate refuses mixed_precision beside a deepspeed_config_file
        {"distributed_type": "DEEPSPEED", "num_processes": 16, "num_machines": 2, "mixed_precision": None},
    ),
}


# micro batches per process, optimizer steps per epoch, warmup steps (3668 train rows, 8 per device, 3 epochs)
STEPS = {
    "cpu-local-1proc": (459, 459, 138),  # 3668/8 = 458.5 -> 459; warmup 0.1 x 1377 = 137.7 -> 138
    "cpu-local-2proc": (230, 230, 0),  # 1834 rows each; 1834/8 = 229.25 -> 230
    "slurm-2x4-gpu": (58, 29, 0),  # 458.5 -> 459 rows each; 459/8 -> 58 micro; 58 / 2 accumulation = 29
}


def _plan(case: str) -> Plan:
    recipe, target, rows, _ = CASES[case]
    return make_plan(recipe, target, RUN_DIR, HOST, rows, local_port=LOCAL_PORT if target == "local" else None)


def _rendered(case: str) -> dict[str, str]:
    files = render_files(_plan(case))
    return {name: files[name] for name in ("accelerate.yaml", "plan.json")}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["accelerate.yaml", "plan.json"])
def test_golden(case: str, name: str):
    assert_matches_golden(GOLDEN / case / name, _rendered(case)[name])


def test_no_stray_goldens():
    """A renamed or removed case leaves no golden behind (other renderers keep theirs in other dirs)."""
    expected = {f"{case}/{name}" for case in CASES for name in ("accelerate.yaml", "plan.json")}
    present = {
        str(p.relative_to(GOLDEN)) for name in ("accelerate.yaml", "plan.json") for p in GOLDEN.rglob(name)
    }
    assert present == expected


def test_rendering_is_deterministic():
    for case in CASES:
        assert _rendered(case) == _rendered(case)


@pytest.mark.parametrize("case", CASES)
def test_accelerate_loads_the_config(case: str, tmp_path: Path):
    from accelerate.commands.config.config_args import load_config_from_file

    _, target, _, expected = CASES[case]
    path = tmp_path / "accelerate.yaml"
    path.write_text(_rendered(case)["accelerate.yaml"])
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == expected["distributed_type"]
    assert config.num_processes == expected["num_processes"]
    assert config.num_machines == expected["num_machines"]
    assert config.mixed_precision == expected["mixed_precision"]
    if expected["mixed_precision"] is not None:
        assert isinstance(config.mixed_precision, str)  # 'no' must not come back as False (YAML 1.1)
    assert config.machine_rank == 0
    if target == "local":
        assert (config.main_process_ip, config.main_process_port) == ("127.0.0.1", LOCAL_PORT)
    else:
        assert config.main_process_port is None  # each node passes the job's port on the command line
    if expected["distributed_type"] == "DEEPSPEED":
        assert config.deepspeed_config["deepspeed_config_file"] == f"{RUN_DIR}/deepspeed.json"
        assert config.deepspeed_config["zero3_init_flag"] is True


@pytest.mark.parametrize("case", CASES)
def test_plan_json_matches_the_plan(case: str):
    plan = _plan(case)
    data = json.loads(_rendered(case)["plan.json"])
    assert Plan.from_dict(data) == plan
    recipe, _, _, expected = CASES[case]
    assert data["world_size"] == expected["num_processes"] == recipe.cluster.nodes * data["procs_per_node"]
    assert data["run_dir"] == RUN_DIR and data["python"] == "/venv/bin/python"
    micro, steps, warmup = STEPS.get(case, (None, None, None))
    assert (data["micro_batches_per_epoch"], data["steps_per_epoch"], data["warmup_steps"]) == (micro, steps, warmup)
    assert data["total_steps"] == (3 * steps if steps else None)


def test_accelerate_yaml_precision_no_is_a_string():
    text = _rendered("cpu-local-1proc")["accelerate.yaml"]
    assert yaml.safe_load(text)["mixed_precision"] == "no"  # YAML 1.1 reader, as accelerate uses


@pytest.mark.parametrize("case", CASES)
def test_accelerate_launch_accepts_the_config(case: str, tmp_path: Path):
    """`accelerate launch --config_file` argument validation, as each node runs it (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    _, _, _, expected = CASES[case]
    path = tmp_path / "accelerate.yaml"
    path.write_text(_rendered(case)["accelerate.yaml"])
    argv = ["--config_file", str(path), "--machine_rank", "1", "--main_process_ip", "node-a",
            "--main_process_port", "12346", "-m", "launcher.train", RUN_DIR]  # fmt: skip
    args, _, mixed_precision_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.num_processes == expected["num_processes"] and args.num_machines == expected["num_machines"]
    assert args.use_deepspeed == (expected["distributed_type"] == "DEEPSPEED")
    assert args.multi_gpu == (expected["distributed_type"] == "MULTI_GPU")
    if args.use_deepspeed:
        # launch_command would list mixed_precision among the config fields DeepSpeedPlugin rejects
        # next to a deepspeed_config_file ("... will be ignored")
        assert mixed_precision_from_config is False
    else:
        assert args.mixed_precision == expected["mixed_precision"]
