"""The rendered files of a TPU job, without a TPU: golden files, accelerate's own loader and launcher
checks on the XLA config, bash -n and shellcheck, and the pod script run against a stub `gcloud`
that logs every call and runs the worker command the way a worker's shell would (hostile values
stay literal). No TPU is reachable from here: the script is a pure, tested rendering.

FTL_UPDATE_GOLDENS=1 python -m pytest tests/test_tpu_render.py  rewrites tests/golden/tpu/*.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftl_support import assert_matches_golden
from slurm_fixture import shellcheck_path

from launcher import __version__
from launcher.cli.main import main
from launcher.errors import UserError
from launcher.plan import HostFacts, make_plan
from launcher.recipe import load_recipe, parse_override
from launcher.render import render_files
from launcher.render.tpu_pod import render_tpu_files

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "tpu"
RECIPE = str(REPO / "recipes" / "mrpc.yaml")
RUN_DIR = "/scratch/runs/mrpc-tpu"
POD = [
    "cluster.accelerator=tpu", "data.padding=max_length",
    "cluster.tpu={name: my-pod, zone: us-central2-b, type: v5litepod-16, project: my-project}",
    "cluster.setup=[export PATH=\"$HOME/venv/bin:$PATH\"]", "cluster.env={HF_HOME: /mnt/disks/hf}",
]  # fmt: skip
MRPC_ROWS = {"train": 3668, "validation": 408}


def pod_plan(sets=POD, run_dir=RUN_DIR, rows=MRPC_ROWS):
    recipe = load_recipe(RECIPE, [parse_override(s) for s in sets]).recipe
    return recipe, make_plan(recipe, "tpu", run_dir, HostFacts(python="/submitting/venv/bin/python"), rows)


def rendered() -> dict[str, str]:
    recipe, plan = pod_plan()
    files = render_files(plan, recipe)
    return {name: text.replace(f"ftlaunch {__version__} ", "ftlaunch VERSION ", 1) for name, text in files.items()}


GOLDENS = {"accelerate.yaml": "accelerate-v5litepod-16.yaml", "plan.json": "plan-v5litepod-16.json",
           "tpu_pod.sh": "tpu_pod.sh", "tpu_worker.sh": "tpu_worker.sh"}  # fmt: skip


@pytest.mark.parametrize("name", GOLDENS)
def test_golden(name):
    assert_matches_golden(GOLDEN / GOLDENS[name], rendered()[name])


def test_accelerate_loads_the_xla_config_and_launch_takes_the_xla_path(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = tmp_path / "accelerate.yaml"
    path.write_text(rendered()["accelerate.yaml"])
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == "XLA"
    assert (config.num_machines, config.num_processes, config.mixed_precision) == (4, 16, "bf16")
    assert (config.tpu_name, config.tpu_zone, config.tpu_use_cluster) == ("my-pod", "us-central2-b", False)
    _, plan = pod_plan()
    argv = [str(path) if arg == f"{RUN_DIR}/accelerate.yaml" else arg for arg in plan.launch_command[3:]]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    # accelerate launch -> tpu_launcher (xmp.spawn on each worker), not the xla_dist pod launcher
    assert args.tpu and not args.tpu_use_cluster and not args.multi_gpu and not args.cpu
    assert (args.module, args.training_script, args.main_training_function) == (True, "launcher.train.__main__", "main")


def test_accelerate_tpu_config_reaches_the_same_tpu(tmp_path, capsys):
    """`accelerate tpu-config --config_file RUN/accelerate.yaml` (accelerate's own TPU setup command)
    reads the TPU name and zone from the rendered file."""
    from accelerate.commands.tpu import tpu_command_launcher, tpu_command_parser

    path = tmp_path / "accelerate.yaml"
    path.write_text(rendered()["accelerate.yaml"])
    tpu_command_launcher(tpu_command_parser().parse_args(["--config_file", str(path), "--command", "nproc", "--debug"]))
    out = capsys.readouterr().out
    assert "gcloud compute tpus tpu-vm ssh my-pod --zone us-central2-b --command" in out and "--worker all" in out


def test_main_is_what_accelerates_xla_launcher_calls():
    import launcher.train.__main__ as entry

    assert callable(entry.main)


@pytest.mark.parametrize("name", ["tpu_pod.sh", "tpu_worker.sh"])
def test_scripts_pass_bash_n_and_shellcheck(name, tmp_path):
    script = tmp_path / name
    script.write_text(rendered()[name])
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck, why = shellcheck_path()
    if shellcheck is None:
        pytest.skip(f"shellcheck assertion skipped: {why}")
    lint = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_pod_script_essentials():
    pod = rendered()["tpu_pod.sh"]
    lines = pod.splitlines()
    assert "FTL_WHERE=(--zone=us-central2-b --project=my-project)" in lines
    assert 'gcloud compute tpus tpu-vm ssh "$FTL_TPU" "${FTL_WHERE[@]}" --worker=all ' \
           f"--command='bash {RUN_DIR}/tpu_worker.sh' || rc=$?" in lines  # fmt: skip
    assert "for worker in $(seq 0 3); do" in lines  # 4 hosts
    worker = rendered()["tpu_worker.sh"]
    assert worker.index('export PATH="$HOME/venv/bin:$PATH"') < worker.index("python3 -m launcher.run.node")
    assert "export PJRT_DEVICE=TPU" in worker and "export HF_HOME=/mnt/disks/hf" in worker


def test_only_the_tpu_target_gets_pod_scripts():
    recipe, plan = pod_plan()
    with pytest.raises(ValueError):
        render_tpu_files(make_plan(load_recipe(RECIPE).recipe, "slurm", RUN_DIR, HostFacts()), recipe)
    assert "tpu_pod.sh" not in render_files(plan)  # no recipe: no setup lines or env to render


def test_run_dir_that_scp_would_mangle_is_refused():
    recipe, plan = pod_plan(run_dir="/scratch/my runs/x")
    with pytest.raises(UserError, match=r"^output_dir: the run dir '/scratch/my runs/x' is copied"):
        render_tpu_files(plan, recipe)


# ------------------------------------------------------------------------- the script, run on stubs

# gcloud: log the call; `describe` answers the TPU type; `ssh --command=C` runs C with bash -c, as the
# worker's login shell would (once, as worker $STUB_WORKER); `scp` copies nothing (same machine, same path).
STUB_GCLOUD = f"""#!{sys.executable}
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if "describe" in args:
    print(os.environ["STUB_TPU_TYPE"])
elif "ssh" in args:
    command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
    sys.exit(subprocess.run(["bash", "-c", command]).returncode)
"""
STUB_CURL = "#!/bin/bash\necho \"$STUB_WORKER\"\n"
STUB_PYTHON3 = r"""#!/bin/bash
{ printf 'ARGS'; printf ' <%s>' "$@"; printf '\n'; printf 'ENV <%s> <%s>\n' "$PJRT_DEVICE" "$HOSTILE_ENV"; } >> "$WORKER_LOG"
echo "node agent output"
"""
HOSTILE_NAME = "x; rm -rf ~"
HOSTILE = "$(touch PWNED) `touch PWNED` 'single' \"double\" \\ ${HOME}"


def stub_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", STUB_GCLOUD), ("curl", STUB_CURL), ("python3", STUB_PYTHON3)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_LOG=str(tmp_path / "gcloud.log"),
                WORKER_LOG=str(tmp_path / "worker.log"), STUB_WORKER="0")  # fmt: skip


def hostile_files(tmp_path: Path, accelerator_type: str = "v4-8"):
    recipe, _ = pod_plan()
    tpu = recipe.cluster.tpu.model_validate(
        {"name": HOSTILE_NAME, "zone": f"z {HOSTILE}", "project": f"p {HOSTILE}", "type": accelerator_type}
    )
    cluster = recipe.cluster.model_copy(update={"tpu": tpu, "env": {"HOSTILE_ENV": HOSTILE}, "setup": []})
    recipe = recipe.model_copy(update={"name": HOSTILE, "cluster": cluster})
    plan = make_plan(recipe, "tpu", str(tmp_path / "runs" / "run-1"), HostFacts(), MRPC_ROWS)
    Path(plan.run_dir).mkdir(parents=True)
    for name, text in render_tpu_files(plan, recipe).items():
        (Path(plan.run_dir) / name).write_text(text)
    return recipe, plan


def gcloud_calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "gcloud.log").read_text().splitlines()]


def test_hostile_values_stay_literal(tmp_path):
    """TPU name, zone, project, job name and an env value full of shell syntax: every gcloud call gets
    them as single literal arguments, the worker sees the env value literally, nothing is executed."""
    _, plan = hostile_files(tmp_path)
    env = stub_path(tmp_path) | {"STUB_TPU_TYPE": "v4-8"}
    result = subprocess.run(["bash", f"{plan.run_dir}/tpu_pod.sh"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    where = [f"--zone=z {HOSTILE}", f"--project=p {HOSTILE}"]
    calls = gcloud_calls(tmp_path)
    run_dir, parent = plan.run_dir, str(Path(plan.run_dir).parent)
    assert calls[:4] == [
        ["compute", "tpus", "tpu-vm", "describe", HOSTILE_NAME, *where, "--format=value(acceleratorType)"],
        ["compute", "tpus", "tpu-vm", "ssh", HOSTILE_NAME, *where, "--worker=all", f"--command=mkdir -p {parent}"],
        ["compute", "tpus", "tpu-vm", "scp", "--recurse", run_dir, f"{HOSTILE_NAME}:{parent}", *where, "--worker=all"],
        ["compute", "tpus", "tpu-vm", "ssh", HOSTILE_NAME, *where, "--worker=all", f"--command=bash {run_dir}/tpu_worker.sh"],
    ]  # fmt: skip
    back = [c for c in calls[4:] if c[3] == "scp"]
    assert back[0] == ["compute", "tpus", "tpu-vm", "scp", "--recurse", *(f"{HOSTILE_NAME}:{run_dir}/{d}"
                       for d in ("metrics", "status", "logs")), f"{run_dir}/", *where, "--worker=0"]  # fmt: skip
    worker = (tmp_path / "worker.log").read_text().splitlines()
    assert worker == [
        "ARGS <-m> <launcher.run.node> <" + run_dir + "> <--machine-rank> <0>",
        f"ENV <TPU> <{HOSTILE}>",
    ]
    assert (Path(run_dir) / "logs" / "node-0.log").read_text() == "node agent output\n"
    assert not list(tmp_path.rglob("PWNED")), "a value was executed"


def test_pod_script_refuses_a_tpu_of_another_type(tmp_path):
    _, plan = hostile_files(tmp_path, accelerator_type="v4-8")
    env = stub_path(tmp_path) | {"STUB_TPU_TYPE": "v4-32"}
    result = subprocess.run(["bash", f"{plan.run_dir}/tpu_pod.sh"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "is 'v4-32', but this run was planned for v4-8: submit again with --tpu-type v4-32" in result.stderr
    assert [call[3] for call in gcloud_calls(tmp_path)] == ["describe"]  # nothing copied, nothing started


def test_submit_runs_the_pod_script_with_gcloud(tmp_path, capsys, monkeypatch):
    """`ftlaunch submit --tpu` without --dry-run: the same run dir, then the pod script with gcloud."""
    env = stub_path(tmp_path) | {"STUB_TPU_TYPE": "v4-8"}
    for key in ("PATH", "GCLOUD_LOG", "WORKER_LOG", "STUB_WORKER", "STUB_TPU_TYPE"):
        monkeypatch.setenv(key, env[key])
    code = main(["submit", RECIPE, "--tpu", "my-pod", "--zone", "us-central2-b", "--set", f"output_dir={tmp_path / 'runs'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    (run_dir,) = (tmp_path / "runs").iterdir()
    calls = gcloud_calls(tmp_path)
    assert calls[0][:5] == ["compute", "tpus", "tpu-vm", "describe", "my-pod"]
    assert ["--worker=all", f"--command=bash {run_dir}/tpu_worker.sh"] == calls[3][-2:]
    assert (run_dir / "report.json").is_file()  # written here, from what the workers sent back
