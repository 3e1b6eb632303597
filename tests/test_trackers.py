"""train.report_to: real runs of TensorBoard, W&B (offline mode) and MLflow (its local file store),
read back with each library's own reader; credentials only ever in the environment; a tracker that
cannot log is one line before submit, not a silent gap."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, ftlaunch, local_mrpc_overrides, only_run_dir
from launcher import trackers
from launcher.cli.main import main

WANDB_KEY = "wandb-key-value-7f3a91"  # a credential that must never reach a file of the run dir
MLFLOW_TOKEN = "mlflow-token-value-c02e5d"


def wandb_records(path: Path) -> list:
    """A W&B transaction log (run-ID.wandb) as W&B's own protobuf records: a 7-byte header, then
    32 KiB blocks of records framed as in a LevelDB log (crc32, length, type: full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.e2e
def test_three_trackers_write_runs_their_own_readers_load(tmp_path, tiny_model_dir, mrpc_dir, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": WANDB_KEY, "MLFLOW_TRACKING_TOKEN": MLFLOW_TOKEN}
    for name in ("MLFLOW_TRACKING_URI", "WANDB_DIR", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "runs"
    result = ftlaunch("submit", MRPC_RECIPE, "--local",
                      *local_mrpc_overrides(tiny_model_dir, mrpc_dir, out, **{"train.report_to": "[tensorboard, wandb, mlflow]"}),
                      env=env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = only_run_dir(out)

    # MLflow: the run dir's own file store, read with MLflow's client
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when told
    client = mlflow.MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
    experiment = client.get_experiment_by_name("mrpc-bert-base")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name and run.data.tags["ftlaunch.run_dir"] == str(run_dir)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    assert "validation_accuracy" in run.data.metrics and run.data.params["train.lr"] == "5e-05"
    assert run.info.status == "FINISHED"

    # W&B: the offline run under RUN/wandb, read with W&B's own record format
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(log)
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (header.project, header.display_name, header.run_id) == ("mrpc-bert-base", run_dir.name, run_dir.name)
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]  # fmt: skip
    assert [h["_step"] for h in history if "train_loss" in h] == ["1", "2", "3", "4"]
    assert any("validation_accuracy" in h for h in history)

    # TensorBoard: events under RUN/tensorboard
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    # tokens passed through the environment only
    for path in (p for p in run_dir.rglob("*") if p.is_file()):
        content = path.read_bytes()
        assert WANDB_KEY.encode() not in content and MLFLOW_TOKEN.encode() not in content, path


def test_a_tracker_without_its_library_is_one_line_before_submit(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(trackers.LIBRARY, "wandb", "wandb_is_not_installed_here")  # this Python lacks it
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "runs"
    args = ["submit", str(MRPC_RECIPE), "--local", "--no-check", "--set", "train.report_to=[tensorboard, wandb]",
            "--set", "train.precision=no", "--set", f"output_dir={out}"]  # fp32: the same error on any CPU  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        "ftlaunch: error: train.report_to: wandb is not installed for this Python (pip install 'ftlaunch[trackers]', "
        "or pip install wandb); accelerate would silently leave it out"
    ]
    assert not out.exists()


def test_wandb_without_a_key_is_refused_unless_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login me password x\n")
    environ = {"NETRC": str(netrc)}
    (problem,) = trackers.tracker_problems(["wandb"], environ)
    assert problem.startswith("train.report_to: wandb has no API key here (WANDB_API_KEY is not set, no wandb login")
    assert "WANDB_MODE=offline" in problem
    assert trackers.tracker_problems(["wandb"], {**environ, "WANDB_MODE": "offline"}) == []
    assert trackers.tracker_problems(["wandb"], {**environ, "WANDB_API_KEY": "k"}) == []
    netrc.write_text("machine api.wandb.ai login user password k\n")  # what `wandb login` writes
    netrc.chmod(0o600)
    assert trackers.tracker_problems(["wandb"], environ) == []


def test_report_to_in_the_recipe(capsys):
    assert main(["validate", str(MRPC_RECIPE), "--set", "train.report_to=[wandb, wandb]"]) == 2
    assert "train.report_to: a tracker is listed twice" in capsys.readouterr().err
    assert main(["validate", str(MRPC_RECIPE), "--set", "train.report_to=[comet]"]) == 2
    assert "train.report_to.0" in capsys.readouterr().err
    assert main(["validate", str(MRPC_RECIPE), "--set", "train.report_to=[]"]) == 0


def test_credentials_for_trackers_are_refused_in_the_recipe(capsys):
    assert main(["validate", str(MRPC_RECIPE), "--set", "cluster.env={WANDB_API_KEY: x, MLFLOW_TRACKING_PASSWORD: y}"]) == 2
    err = capsys.readouterr().err
    assert "cluster.env.WANDB_API_KEY: secrets do not belong in a recipe" in err
    assert "cluster.env.MLFLOW_TRACKING_PASSWORD: secrets do not belong in a recipe" in err


def test_mlflow_goes_to_the_run_dir_unless_told_otherwise():
    assert trackers.mlflow_defaults("/r", {}) == {"MLFLOW_TRACKING_URI": "file:/r/mlruns", "MLFLOW_ALLOW_FILE_STORE": "true"}
    assert trackers.mlflow_defaults("/r", {"MLFLOW_TRACKING_URI": "https://mlflow.example.org"}) == {}
