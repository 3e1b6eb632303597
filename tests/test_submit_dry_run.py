"""`ftlaunch submit --dry-run`: the whole recipe -> plan -> render -> run dir path, stopped before launch.

A couple of tests run the installed `ftlaunch` console script; the rest call `main()` in-process."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftl_support import HOST_PRECISION
from launcher.cli.main import main
from launcher.recipe import load_recipe, load_resolved, parse_override

RUN_FILES = {"recipe.yaml", "plan.json", "accelerate.yaml", "env.json"}
FTLAUNCH = Path(sys.executable).parent / "ftlaunch"


def run_dirs(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.iterdir()) if output_dir.exists() else []


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = run_dirs(output_dir)  # exactly one entry: no staging leftovers either
    assert run_dir.is_dir() and not run_dir.name.startswith(".")
    return run_dir


def dry_run(capsys, repo_root: Path, output_dir: Path, *args: str) -> tuple[int, str, str]:
    # The shipped recipe says bf16 (for GPUs); a --local run on this CPU takes what it runs natively.
    local = ["--set", f"train.precision={HOST_PRECISION}"] if "--local" in args else []
    argv = ["submit", str(repo_root / "recipes/mrpc.yaml"), "--dry-run", "--set", f"output_dir={output_dir}", *local, *args]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_dry_run(repo_root: Path, tmp_path: Path):
    assert FTLAUNCH.is_file(), "the ftlaunch console script is not installed in this venv"
    out_dir = tmp_path / "runs"
    result = subprocess.run(
        [str(FTLAUNCH), "submit", "recipes/mrpc.yaml", "--dry-run", "--nodes", "2", "--gpus-per-node", "4",
         "--set", f"output_dir={out_dir}"],  # fmt: skip
        cwd=repo_root,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr

    recipe = load_recipe(repo_root / "recipes/mrpc.yaml").recipe
    world = 2 * 4
    effective = recipe.train.per_device_batch_size * recipe.train.gradient_accumulation_steps * world
    assert effective == 64
    (world_line,) = [line for line in result.stdout.splitlines() if "world size" in line]
    assert re.search(rf"\b{world} = 2 node\(s\) x 4 process\(es\)", world_line)
    (batch_line,) = [line for line in result.stdout.splitlines() if "effective batch" in line]
    assert re.search(rf"\b{effective} = {recipe.train.per_device_batch_size} per device", batch_line)

    run_dir = only_run_dir(out_dir)
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    plan = json.loads((run_dir / "plan.json").read_text())
    assert (plan["world_size"], plan["nodes"], plan["procs_per_node"]) == (world, 2, 4)
    assert plan["effective_batch_size"] == effective
    assert plan["run_dir"] == str(run_dir)
    assert str(run_dir) in result.stdout.replace("\n", "")  # the printed run dir is the one written


def test_console_script_error_exit_code(repo_root: Path, tmp_path: Path):
    result = subprocess.run(
        [str(FTLAUNCH), "submit", "recipes/mrpc.yaml", "--dry-run", "--nodes", "0", "--set", f"output_dir={tmp_path}"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ftlaunch: error: --nodes (cluster.nodes): Input should be greater than or equal to 1 (got 0)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_run_dirs_are_never_reused(repo_root: Path, tmp_path: Path, capsys):
    for _ in range(2):
        code, out, err = dry_run(capsys, repo_root, tmp_path)
        assert (code, err) == (0, "")
    first, second = run_dirs(tmp_path)
    assert first != second
    for run_dir in (first, second):
        assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
        assert json.loads((run_dir / "plan.json").read_text())["run_dir"] == str(run_dir)


def test_dry_run_does_not_import_torch(repo_root: Path, tmp_path: Path):
    heavy = ["torch", "transformers", "datasets", "accelerate", "deepspeed"]
    code = (
        "import sys\n"
        "from launcher.cli.main import main\n"
        f"rc = main(['submit', 'recipes/mrpc.yaml', '--dry-run', '--nodes', '2', '--set', 'output_dir={tmp_path}'])\n"
        "assert rc == 0, rc\n"
        f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(run_dirs(tmp_path)) == 1


def test_secrets_never_reach_the_run_dir(repo_root: Path, tmp_path: Path, capsys, monkeypatch):
    secrets = {"HF_TOKEN": "hf_secret_value_123", "WANDB_API_KEY": "wandb_secret_value_456"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    code, out, err = dry_run(capsys, repo_root, tmp_path, "--local")
    assert (code, err) == (0, "")
    run_dir = only_run_dir(tmp_path)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert RUN_FILES <= {p.name for p in files}
    for path in files:
        content = path.read_bytes()
        for value in secrets.values():
            assert value.encode() not in content, f"{value} leaked into {path.name}"
    for value in secrets.values():
        assert value not in out
    record = json.loads((run_dir / "env.json").read_text())
    assert set(secrets) <= set(record["secrets_passed_through"])
    assert "COMET_API_KEY" not in record["secrets_passed_through"]


def test_secrets_absent_are_not_listed(repo_root: Path, tmp_path: Path, capsys, monkeypatch):
    from launcher.secrets import KNOWN_SECRETS

    for name in KNOWN_SECRETS:
        monkeypatch.delenv(name, raising=False)
    assert dry_run(capsys, repo_root, tmp_path)[0] == 0
    record = json.loads((only_run_dir(tmp_path) / "env.json").read_text())
    assert record["secrets_passed_through"] == []


@pytest.mark.parametrize("name", ["x; rm -rf ~", "../../escape", "$(touch pwned) `id`", ".. ..", "naïve name"])
def test_hostile_job_name(repo_root: Path, tmp_path: Path, capsys, name: str):
    out_dir = tmp_path / "out"
    code, out, err = dry_run(capsys, repo_root, out_dir, "--set", f"name={name}")
    assert (code, err) == (0, "")
    run_dir = only_run_dir(out_dir)
    assert run_dir.parent == out_dir  # directly under output_dir, not above it
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_dir.name), run_dir.name
    assert not (tmp_path / "pwned").exists() and not (repo_root / "pwned").exists()
    # the recipe keeps the name verbatim
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["name"] == name
    assert load_resolved(run_dir / "recipe.yaml").name == name
    assert json.loads((run_dir / "plan.json").read_text())["name"] == name


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def test_local_data_files(repo_root: Path, mrpc_dir: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(mrpc_dir.parent)  # relative paths, as a user would type them
    rel = mrpc_dir.name
    code, out, err = dry_run(
        capsys,
        repo_root,
        tmp_path,
        "--nodes", "2", "--gpus-per-node", "4",
        "--set", f"data.files.train={rel}/train.jsonl",
        "--set", f"data.files.validation={rel}/validation.jsonl",
        "--set", "data.dataset=null",
        "--set", "data.config=null",
    )  # fmt: skip
    assert (code, err) == (0, "")
    run_dir = only_run_dir(tmp_path)
    plan = json.loads((run_dir / "plan.json").read_text())

    train_rows, eval_rows = count_lines(mrpc_dir / "train.jsonl"), count_lines(mrpc_dir / "validation.jsonl")
    assert (train_rows, eval_rows) == (3668, 408)  # GLUE MRPC
    assert (plan["train_rows"], plan["eval_rows"]) == (train_rows, eval_rows)
    world, per_device = 8, 8
    assert (plan["world_size"], plan["per_device_batch_size"]) == (world, per_device)
    # 3668 / 8 processes = 458.5 -> 459 rows each; 459 / 8 per device = 57.4 -> 58 optimizer steps
    assert plan["steps_per_epoch"] == math.ceil(math.ceil(train_rows / world) / per_device) == 58
    assert plan["total_steps"] == 58 * plan["epochs"]

    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]
    assert resolved["files"] == {
        "train": str((mrpc_dir / "train.jsonl").resolve()),
        "validation": str((mrpc_dir / "validation.jsonl").resolve()),
    }
    assert all(Path(p).is_absolute() for p in resolved["files"].values())
    assert resolved["dataset"] is None and resolved["config"] is None


def test_resolved_recipe_round_trips(repo_root: Path, tmp_path: Path, capsys):
    """recipe.yaml in the run dir means exactly the validated recipe (YAML quirks included)."""
    overrides = ["train.precision=no", "cluster.time=1:30:00", "train.lr=3e-5", "cluster.env={OMP_NUM_THREADS: 4}"]
    args = [a for o in overrides for a in ("--set", o)]
    code, out, err = dry_run(capsys, repo_root, tmp_path, *args)
    assert (code, err) == (0, "")
    run_dir = only_run_dir(tmp_path)
    expected = load_recipe(
        repo_root / "recipes/mrpc.yaml", [parse_override(o) for o in [*overrides, f"output_dir={tmp_path}"]]
    ).recipe
    resolved = load_resolved(run_dir / "recipe.yaml")
    assert resolved == expected
    assert (resolved.train.precision, resolved.cluster.time) == ("no", "1:30:00")
    header = (run_dir / "recipe.yaml").read_text().splitlines()[0]
    assert header.startswith("# Resolved by ftlaunch from")


def test_local_dry_run_picks_a_port_pair(repo_root: Path, tmp_path: Path, capsys):
    assert dry_run(capsys, repo_root, tmp_path, "--local")[0] == 0
    run_dir = only_run_dir(tmp_path)
    plan = json.loads((run_dir / "plan.json").read_text())
    port = plan["rendezvous"]["port"]
    assert plan["target"] == "local" and plan["rendezvous"]["head"] == "127.0.0.1"
    assert isinstance(port, int) and port % 2 == 0 and 1024 <= port < 65535
    accelerate = yaml.safe_load((run_dir / "accelerate.yaml").read_text())
    assert accelerate["main_process_port"] == port


def test_user_without_passwd_entry(repo_root: Path, tmp_path: Path, capsys, monkeypatch):
    """In a container the uid may have no passwd entry and no USER/LOGNAME: still no traceback."""
    import pwd

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    code, out, err = dry_run(capsys, repo_root, tmp_path)
    assert (code, err) == (0, "")
    assert json.loads((only_run_dir(tmp_path) / "env.json").read_text())["user"] is None
