"""TPUs in the recipe, the plan and `submit`: hosts x devices from the accelerator type, the rules a
TPU job must pass, the fixed shapes the plan promises, and the CLI's --tpu/--zone/--tpu-type.

Expected numbers are worked out by hand in the comments (MRPC: 3668 train rows, 408 validation rows)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from launcher.cli.main import main
from launcher.errors import UserError
from launcher.plan import HostFacts, make_plan
from launcher.plan.tpu import micro_batches, topology
from launcher.recipe import load_recipe, parse_override
from launcher.submit.hostfacts import local_tpu_chips

REPO = Path(__file__).resolve().parents[1]
MRPC_RECIPE = str(REPO / "recipes" / "mrpc.yaml")
MRPC_ROWS = {"train": 3668, "validation": 408}
POD = ["cluster.accelerator=tpu", "cluster.tpu={name: my-pod, zone: us-central2-b, type: v5litepod-16}",
       "data.padding=max_length"]  # fmt: skip
XLA_HOST = HostFacts(python="/xla/bin/python", torch_xla=True)


def mrpc(*sets: str):
    return load_recipe(MRPC_RECIPE, [parse_override(s) for s in sets]).recipe


def problems(*sets: str) -> list[str]:
    with pytest.raises(UserError) as caught:
        mrpc(*sets)
    return caught.value.problems


@pytest.mark.parametrize(
    "accelerator_type, hosts, devices",
    [
        ("v2-8", 1, 8),  # 8 TensorCores, one XLA device each, one host
        ("v3-32", 4, 8),
        ("v4-8", 1, 4),  # 8 TensorCores = 4 megacore chips = 4 devices on one host
        ("v4-32", 4, 4),
        ("v5p-16", 2, 4),
        ("v5litepod-1", 1, 1),  # v5e counts chips; up to 8 on one host
        ("v5litepod-8", 1, 8),
        ("v5litepod-16", 4, 4),  # multi-host v5e: 4 chips per host
        ("v6e-256", 64, 4),
    ],
)
def test_topology_from_the_accelerator_type(accelerator_type, hosts, devices):
    shape = topology(accelerator_type)
    assert (shape.hosts, shape.devices_per_host, shape.devices) == (hosts, devices, hosts * devices)


@pytest.mark.parametrize("bad", ["v4-6", "v5litepod-6", "v9-8", "tpu", "v3-12", "v5litepod-18"])
def test_unknown_or_impossible_types_are_refused(bad):
    with pytest.raises(ValueError, match=bad):
        topology(bad)


def test_rules_for_a_tpu_recipe():
    found = problems(
        "cluster.accelerator=tpu", "cluster.tpu={name: p, zone: z, type: v4-6}", "distributed.backend=deepspeed",
        "train.precision=fp16", "cluster.nodes=2", "cluster.procs_per_node=4", "model.hub_kernels=on",
    )  # fmt: skip
    fields = sorted(problem.split(":", 1)[0].removeprefix("--set ") for problem in found)
    assert fields == ["cluster.nodes", "cluster.procs_per_node", "cluster.tpu.type", "distributed.backend",
                      "model.hub_kernels", "train.precision"]  # fmt: skip
    assert all("\n" not in problem for problem in found)


def test_tpu_section_needs_the_tpu_accelerator():
    (problem,) = problems("cluster.tpu={name: p, zone: z}")
    assert "cluster.tpu" in problem and "cluster.accelerator: tpu" in problem


def test_pod_plan_hosts_devices_and_fixed_shapes():
    plan = make_plan(mrpc(*POD), "tpu", "/runs/x", HostFacts(), MRPC_ROWS)
    assert (plan.device, plan.nodes, plan.procs_per_node, plan.world_size) == ("xla", 4, 4, 16)
    # drop_last: 3668 // 8 = 458 whole batches, dealt to 16 devices: 458 // 16 = 28 each
    assert (plan.micro_batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (28, 28, 84)
    assert plan.effective_batch_size == 8 * 16
    xla = plan.xla
    assert xla["train_batch_shape"] == [8, 128] and xla["eval_batch_shape"] == [16, 128]
    assert xla["train_rows_dropped_per_epoch"] == 3668 - 28 * 8 * 16 == 84
    # evaluation in rounds of 16 rows x 16 devices: 2 rounds = 512 slots for 408 rows
    assert xla["eval_filler_rows"] == 512 - 408
    assert xla["tpu"] == {"name": "my-pod", "zone": "us-central2-b", "project": None}
    assert plan.python == "python3"  # the TPU VM's interpreter, not the submitting host's
    assert "--head" not in plan.node_command and "{machine_rank}" in plan.node_command
    assert plan.launch_command[-3:] == ["-m", "launcher.train.__main__", "/runs/x"]


def test_micro_batches_match_accelerates_drop_last_sharding():
    """accelerate's BatchSamplerShard with drop_last: len(batch sampler) // processes."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    for rows, per_device, world in [(3668, 8, 16), (96, 8, 1), (100, 8, 3), (64, 8, 4)]:
        sampler = BatchSampler(SequentialSampler(range(rows)), per_device, drop_last=True)
        lengths = {len(BatchSamplerShard(sampler, world, rank)) for rank in range(world)}
        assert lengths == {micro_batches(rows, world, per_device)}
        for rank in range(world):  # every batch full: one shape
            assert {len(b) for b in BatchSamplerShard(sampler, world, rank)} <= {per_device}


def test_dynamic_padding_refused_on_a_tpu():
    with pytest.raises(UserError) as caught:
        make_plan(mrpc("cluster.accelerator=tpu", "cluster.tpu={name: p, zone: z}"), "tpu", "/r", HostFacts(), MRPC_ROWS)
    (problem,) = caught.value.problems
    assert problem.startswith("data.padding: dynamic") and "max_length" in problem


def test_pod_needs_the_tpu_section():
    with pytest.raises(UserError, match=r"^cluster.tpu: .*--tpu NAME --zone ZONE"):
        make_plan(mrpc("cluster.accelerator=tpu", "data.padding=max_length"), "tpu", "/r", HostFacts(), MRPC_ROWS)


def test_default_type_is_planned_and_said():
    plan = make_plan(mrpc("cluster.accelerator=tpu", "cluster.tpu={name: p, zone: z}", "data.padding=max_length"),
                     "tpu", "/r", HostFacts(), MRPC_ROWS)  # fmt: skip
    assert plan.xla["accelerator_type"] == "v4-8" and plan.world_size == 4
    assert any("cluster.tpu.type not set" in note for note in plan.notes)


def test_local_xla_needs_torch_xla():
    recipe = mrpc("cluster.accelerator=tpu", "data.padding=max_length")
    with pytest.raises(UserError, match=r"^cluster.accelerator: tpu runs on XLA, and this interpreter \(/venv/python\)"):
        make_plan(recipe, "local", "/r", HostFacts(python="/venv/python"), MRPC_ROWS, local_port=29400)


def test_local_xla_on_the_cpu_and_on_tpu_chips():
    recipe = mrpc("cluster.accelerator=tpu", "data.padding=max_length")
    cpu = make_plan(recipe, "local", "/r", XLA_HOST, MRPC_ROWS, local_port=29400)
    assert (cpu.xla["pjrt_device"], cpu.world_size, cpu.python) == ("CPU", 1, "/xla/bin/python")
    assert cpu.micro_batches_per_epoch == 3668 // 8 and cpu.xla["train_rows_dropped_per_epoch"] == 4
    assert cpu.xla["eval_filler_rows"] == 416 - 408  # 26 batches of 16
    assert any("PJRT_DEVICE=CPU" in note for note in cpu.notes)
    chips = make_plan(recipe, "local", "/r", HostFacts(python="/p", torch_xla=True, tpu_chips=4), MRPC_ROWS)
    assert (chips.xla["pjrt_device"], chips.world_size) == ("TPU", 4)


def test_dynamic_padding_allowed_on_xla_cpu_with_a_note():
    """XLA:CPU is where the cost of dynamic shapes is measured (bench/xla_padding.py); a TPU refuses them."""
    plan = make_plan(mrpc("cluster.accelerator=tpu"), "local", "/r", XLA_HOST, MRPC_ROWS)
    assert plan.xla["train_batch_shape"] == [8, None]
    assert any("dynamic" in note and "refused on a TPU" in note for note in plan.notes)
    with pytest.raises(UserError, match="^data.padding: dynamic"):
        make_plan(mrpc("cluster.accelerator=tpu"), "local", "/r", HostFacts(python="/p", torch_xla=True, tpu_chips=8))


def test_tpu_job_is_not_a_slurm_job():
    with pytest.raises(UserError, match="^cluster.accelerator: tpu does not run on slurm"):
        make_plan(mrpc(*POD), "slurm", "/r", HostFacts(), MRPC_ROWS)


def test_gpu_plans_have_no_xla_section():
    plan = make_plan(mrpc(), "slurm", "/r", HostFacts(), MRPC_ROWS)
    assert plan.xla is None and plan.device == "cuda"


def test_local_tpu_chips_counts_google_tpu_pci_devices(tmp_path):
    for name, vendor, device in [("0000:00:04.0", "0x1ae0", "0x0063"), ("0000:00:05.0", "0x1ae0", "0x0063"),
                                 ("0000:00:06.0", "0x1ae0", "0x9999"), ("0000:00:07.0", "0x8086", "0x0063")]:  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device + "\n")
    assert local_tpu_chips(tmp_path) == 2
    assert local_tpu_chips(tmp_path / "absent") == 0


# ----------------------------------------------------------------------------------- the CLI


def submit(capsys, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["submit", MRPC_RECIPE, "--set", f"output_dir={tmp_path / 'runs'}", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_renders_the_xla_config_and_the_pod_script(capsys, tmp_path):
    code, out, err = submit(capsys, tmp_path, "--tpu", "my-pod", "--zone", "us-central2-b", "--dry-run")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("accelerate.yaml", "plan.json", "recipe.yaml", "tpu_pod.sh", "tpu_worker.sh"):
        assert (run_dir / name).is_file(), name
        assert name == "recipe.yaml" or f" {name} " in out  # printed, as written
    assert "distributed_type: XLA" in out and "tpu_name: my-pod" in out
    assert "gcloud compute tpus tpu-vm ssh \"$FTL_TPU\" \"${FTL_WHERE[@]}\" --worker=all" in out
    assert f"bash {run_dir}/tpu_pod.sh" in out and "dry run: nothing launched" in out
    assert "every one [8, 128] per device" in out and "padding" in out
    resolved = (run_dir / "recipe.yaml").read_text()
    assert "padding: max_length" in resolved and "--tpu my-pod (data.padding=max_length)" in resolved


def test_explicit_dynamic_padding_wins_over_tpu_and_is_refused(capsys, tmp_path):
    code, out, err = submit(capsys, tmp_path, "--tpu", "p", "--zone", "z", "--set", "data.padding=dynamic", "--dry-run")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftlaunch: error: data.padding: dynamic"), err
    assert "Traceback" not in out + err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_zone_names_the_field(capsys, tmp_path):
    code, _, err = submit(capsys, tmp_path, "--tpu", "p", "--dry-run")
    assert code == 2 and "cluster.tpu.zone" in err and len(err.strip().splitlines()) == 1, err


def test_tpu_type_flag(capsys, tmp_path):
    code, out, err = submit(capsys, tmp_path, "--tpu", "p", "--zone", "z", "--tpu-type", "v4-32", "--dry-run")
    assert code == 0, err
    assert "16 = 4 host(s) x 4 XLA device(s) (v4-32)" in out
    code, _, err = submit(capsys, tmp_path, "--tpu", "p", "--zone", "z", "--tpu-type", "v4-7", "--dry-run")
    assert code == 2 and "cluster.tpu.type" in err


def test_submit_without_gcloud_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code, _, err = submit(capsys, tmp_path, "--tpu", "p", "--zone", "z")
    assert code == 2 and err.startswith("ftlaunch: error: gcloud not found on PATH"), err
    assert not (tmp_path / "runs").exists()


def test_local_xla_from_an_interpreter_without_torch_xla(capsys, tmp_path):
    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("this interpreter has torch_xla (the test is for one without)")
    code, _, err = submit(capsys, tmp_path, "--local", "--set", "cluster.accelerator=tpu", "--set", "data.padding=max_length")
    assert code == 2 and "ftlaunch: error: cluster.accelerator: tpu runs on XLA" in err
    assert not (tmp_path / "runs").exists()
