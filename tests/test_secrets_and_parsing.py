"""Credentials never reach a run dir (names refused in recipes, values redacted from the recorded
command line, refused as script arguments), and Slurm's job tables are read right (array ranges)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, ftlaunch
from launcher.secrets import looks_secret, redact_argv, secret_argument
from launcher.submit.slurm import expand_job_ids, parse_table


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "my-api-key", "hf_token"])  # fmt: skip
def test_credential_names_are_recognised(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MONKEY", "KEYBOARD_LAYOUT", "NCCL_DEBUG"])
def test_ordinary_names_are_not(name):
    assert not looks_secret(name)


def test_redaction_keeps_the_command_line_readable():
    argv = ["ftlaunch", "submit", "--set", "cluster.env.HF_TOKEN=hf_abc", "--script", "t.py", "--",
            "--hf-token", "hf_def", "--lr", "3e-5", "--api_key=k_1", "--use-api-key", "--epochs", "2"]  # fmt: skip
    assert redact_argv(argv) == ["ftlaunch", "submit", "--set", "cluster.env.HF_TOKEN=<redacted>", "--script", "t.py",
                                 "--", "--hf-token", "<redacted>", "--lr", "3e-5", "--api_key=<redacted>",
                                 "--use-api-key", "--epochs", "2"]  # fmt: skip
    assert secret_argument(["--lr", "1", "--wandb-key", "x"]) == "--wandb-key"
    assert secret_argument(["--use-api-key", "--lr", "1"]) is None  # a switch, not a value


def test_a_credential_in_the_recipe_or_as_a_script_argument_is_refused_and_leaves_nothing(tmp_path: Path):
    out = tmp_path / "runs"
    env_secret = ftlaunch("submit", MRPC_RECIPE, "--dry-run", "--set", f"output_dir={out}",
                          "--set", "cluster.env.MY_SERVICE_TOKEN=abc123")  # fmt: skip
    assert env_secret.returncode == 2
    assert env_secret.stderr.splitlines() == [
        "ftlaunch: error: --set cluster.env.MY_SERVICE_TOKEN: secrets do not belong in a recipe: export it in your "
        "shell, ftlaunch passes it through"
    ]
    assert "abc123" not in env_secret.stderr + env_secret.stdout
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    arg_secret = ftlaunch("submit", "--script", script, "--local", "--dry-run", "--set", f"output_dir={out}",
                          "--", "--hf-token", "hf_abc")  # fmt: skip
    assert arg_secret.returncode == 2 and len(arg_secret.stderr.splitlines()) == 1, arg_secret.stderr
    assert "-- (entrypoint.args): --hf-token passes a credential on the command line" in arg_secret.stderr
    assert "hf_abc" not in arg_secret.stderr
    assert "Traceback" not in arg_secret.stderr + arg_secret.stdout
    assert not out.exists() or not any(out.iterdir())


def test_the_recorded_command_line_is_redacted():
    from launcher.submit.envrecord import env_record

    record = env_record(["ftlaunch", "submit", "x.yaml", "--set", "train.lr=3e-5", "--", "--api-key", "k_789"])
    assert record["argv"] == ["ftlaunch", "submit", "x.yaml", "--set", "train.lr=3e-5", "--", "--api-key", "<redacted>"]
    assert "k_789" not in json.dumps(record)


def test_a_setup_line_that_sets_a_credential_is_refused(tmp_path: Path):
    out = tmp_path / "runs"
    result = ftlaunch("submit", MRPC_RECIPE, "--dry-run", "--set", f"output_dir={out}",
                      "--set", "cluster.setup=[module load cuda, export WANDB_API_KEY=w_123]")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ftlaunch: error: --set cluster.setup.1: sets WANDB_API_KEY, a credential, which sbatch.sh would record: "
        "export it in your shell before submitting (ftlaunch passes it through)"
    ]
    assert not out.exists() or not any(out.iterdir())


def test_array_ranges_and_headers_are_parsed():
    assert expand_job_ids("12") == ["12"]
    assert expand_job_ids("12_3") == ["12_3"]
    assert expand_job_ids("12_[0-2,7%2]") == ["12_0", "12_1", "12_2", "12_7"]
    sacct = "JobID|State|ExitCode|NodeList\n12_[1-2]|PENDING|0:0|None assigned\n12_0|COMPLETED|0:0|n1\n13|FAILED|3:0|n2\n"
    rows = parse_table("JobID|State|ExitCode|NodeList", sacct)
    assert set(rows) == {"12_0", "12_1", "12_2", "13"}
    assert rows["12_2"]["State"] == "PENDING" and rows["13"]["ExitCode"] == "3:0"
    squeue = "12_0|RUNNING|n1|None|0\n"  # -h: no header line
    assert parse_table("JobID|State|NodeList|Reason|ExitCode", squeue)["12_0"]["NodeList"] == "n1"
    assert parse_table("JobID|State", "") == {}
