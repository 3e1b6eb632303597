"""A user's own training script (recipe `entrypoint` / `ftlaunch submit --script`), through the real CLI:
the course's chapter-3 Accelerate loop on a tiny BERT and real MRPC rows, 2 "nodes" on this host and
2 nodes of the real Slurm dev cluster; a script that raises on one rank; the dry run and bad input."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from ftl_support import HOST_PRECISION, ftlaunch, only_run_dir
from launcher.cli.main import main

# The Hugging Face course, chapter 3 ("A full training" with Accelerate), trimmed to a few steps,
# plus what the tests read: world size, precision and accumulation as Accelerator() saw them, and a
# checksum of the parameters (equal on every rank only if the ranks really trained together).
CHAPTER3_SCRIPT = '''\
import argparse
import json
import os

import torch
from accelerate import Accelerator
from datasets import load_dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--train-file", required=True)
parser.add_argument("--rows", type=int, default=64)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--lr", type=float, default=5e-5)
parser.add_argument("--fail-rank", type=int)
args = parser.parse_args()

accelerator = Accelerator()
tokenizer = AutoTokenizer.from_pretrained(args.model)
raw = load_dataset("json", data_files={"train": args.train_file})["train"].select(range(args.rows))


def tokenize_function(example):
    return tokenizer(example["sentence1"], example["sentence2"], truncation=True)


tokenized = raw.map(tokenize_function, batched=True)
tokenized = tokenized.remove_columns(["sentence1", "sentence2", "idx"]).rename_column("label", "labels")
tokenized.set_format("torch")
data_collator = DataCollatorWithPadding(tokenizer=tokenizer)
train_dataloader = DataLoader(tokenized, shuffle=True, batch_size=4, collate_fn=data_collator)

model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
train_dataloader, model, optimizer = accelerator.prepare(train_dataloader, model, optimizer)
lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=args.steps)


def checksum():
    return sum(p.detach().double().sum().item() for p in accelerator.unwrap_model(model).parameters())


initial = checksum()
model.train()
micro_batches = 0
for batch in train_dataloader:
    with accelerator.accumulate(model):
        outputs = model(**batch)
        accelerator.backward(outputs.loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    micro_batches += 1
    if args.fail_rank is not None and accelerator.process_index == args.fail_rank:
        raise RuntimeError(f"boom on rank {args.fail_rank}")
    if micro_batches == args.steps * accelerator.gradient_accumulation_steps:
        break

final = checksum()
print(
    f"CHECKSUM rank={accelerator.process_index} world={accelerator.num_processes} "
    f"precision={accelerator.mixed_precision} accumulation={accelerator.gradient_accumulation_steps} "
    f"micro_batches={micro_batches} initial={initial:.10f} final={final:.10f}",
    flush=True,
)
if accelerator.is_main_process:
    with open(os.path.join(os.environ["FTL_RUN_DIR"], "script-metrics.json"), "w") as handle:
        json.dump({"loss": outputs.loss.item(), "micro_batches": micro_batches}, handle)
'''

CHECKSUM = re.compile(
    r"^CHECKSUM rank=(\d+) world=(\d+) precision=(\S+) accumulation=(\d+) micro_batches=(\d+) "
    r"initial=(\S+) final=(\S+)$",
    re.M,
)


def write_job(tmp_path: Path, **cluster) -> tuple[Path, Path]:
    """(recipe, script): a minimal recipe (no model/data: the script has its own) and the course's loop."""
    script = tmp_path / "train_mrpc.py"
    script.write_text(CHAPTER3_SCRIPT)
    recipe = tmp_path / "script-job.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "my-script",
                "train": {"precision": HOST_PRECISION, "gradient_accumulation_steps": 2},
                "cluster": {"gpus_per_node": 0, **cluster},
                "output_dir": str(tmp_path / "runs"),
            }
        )
    )
    return recipe, script


def script_args(model_dir: Path, mrpc_dir: Path, *extra: str) -> list[str]:
    return ["--", "--model", str(model_dir), "--train-file", str(mrpc_dir / "train.jsonl"), "--lr", "3e-4", *extra]


def checksums(run_dir: Path) -> dict[int, dict]:
    """rank -> what it printed, each from its own node's log (node N runs rank N here)."""
    found = {}
    for node in (0, 1):
        for match in CHECKSUM.finditer((run_dir / "logs" / f"node-{node}.log").read_text()):
            rank, world, precision, accumulation, micro, initial, final = match.groups()
            assert int(rank) == node, f"rank {rank} printed in node {node}'s log"
            found[int(rank)] = {
                "world": int(world), "precision": precision, "accumulation": int(accumulation),
                "micro_batches": int(micro), "initial": float(initial), "final": float(final),
            }  # fmt: skip
    return found


def assert_trained_together(run_dir: Path) -> None:
    ranks = checksums(run_dir)
    assert sorted(ranks) == [0, 1], ranks
    for rank in ranks.values():
        # what Accelerator() saw: the planned world, the recipe's precision and accumulation
        assert (rank["world"], rank["precision"], rank["accumulation"], rank["micro_batches"]) == (2, HOST_PRECISION, 2, 6)
        assert rank["final"] != rank["initial"], "the parameters never changed"
    assert ranks[0]["final"] == ranks[1]["final"], f"ranks out of sync: {ranks}"


def assert_run_dir_keeps_the_script(run_dir: Path, script: Path, args: list[str]) -> None:
    plan = json.loads((run_dir / "plan.json").read_text())
    copy = run_dir / "script" / script.name
    assert plan["entrypoint"] == {"script": str(copy), "source": str(script), "args": args}
    assert plan["launch_command"][-len(args) - 1 :] == [str(copy), *args]
    assert copy.read_bytes() == script.read_bytes()
    manifest = json.loads((run_dir / "script" / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    assert manifest["source"] == str(script) and manifest["args"] == args


# ---------------------------------------------------------------- this host: 2 "nodes"


@pytest.mark.e2e
def test_chapter3_script_on_two_local_nodes(tmp_path, tiny_model_dir, mrpc_dir):
    """Every rank ends with a thread still inside torch (the straggle fault), as gloo's workers can be after
    the last collective: a script's rank ended through Python's teardown would abort there and fail the job."""
    recipe, script = write_job(tmp_path)
    args = script_args(tiny_model_dir, mrpc_dir)
    faults = {"FTL_FAULT": "rank.exit:straggle", "FTL_FAULT_DIR": str(tmp_path / "faults")}
    result = ftlaunch("submit", recipe, "--script", script, "--local", "--nodes", "2", *args, timeout=300, env=faults)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "faults").iterdir()) == ["rank.exit@0.reached", "rank.exit@1.reached"]
    assert "terminate called" not in result.stdout + result.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert_trained_together(run_dir)
    assert_run_dir_keeps_the_script(run_dir, script, args[1:])
    # the console shows every node's output, each line marked with its node
    assert "[node 0] CHECKSUM rank=0" in result.stdout and "[node 1] CHECKSUM rank=1" in result.stdout
    # the launched file is the run dir's copy, not the original
    assert f"{run_dir}/script/train_mrpc.py --model" in (run_dir / "logs" / "node-1.log").read_text()
    status = [json.loads((run_dir / "status" / f"node-{n}.json").read_text()) for n in (0, 1)]
    assert [(s["state"], s["returncode"]) for s in status] == [("done", 0), ("done", 0)]
    assert json.loads((run_dir / "script-metrics.json").read_text())["micro_batches"] == 6  # $FTL_RUN_DIR
    # collect says what it can know about a foreign script: exit status per node, its copy, what it wrote
    report = ftlaunch("collect", run_dir, "--markdown")
    assert report.returncode == 0, report.stderr[-2000:]
    assert "a user script: ftlaunch knows its exit status per node" in report.stdout
    assert "| node 0 | state done, returncode 0 |" in report.stdout and "| node 1 | state done, returncode 0 |" in report.stdout
    assert "script-metrics.json" in report.stdout
    assert json.loads((run_dir / "report.json").read_text())["script"]["manifest"]["sha256"]
    # no records of ours: no empty plot, no made-up throughput
    assert not (run_dir / "curves.png").exists() and "curves.png" not in report.stdout
    assert "| throughput | - (no train records) |" in report.stdout and "0.0 samples/s" not in report.stdout


@pytest.mark.e2e
def test_a_script_that_raises_on_one_rank_ends_the_job_naming_it(tmp_path, tiny_model_dir, mrpc_dir):
    recipe, script = write_job(tmp_path)
    started = time.monotonic()
    result = ftlaunch(
        "submit", recipe, "--script", script, "--local", "--nodes", "2",
        *script_args(tiny_model_dir, mrpc_dir, "--fail-rank", "1", "--steps", "100"), timeout=300,
    )  # fmt: skip
    assert time.monotonic() - started < 120
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    first = result.stderr.splitlines()[0]
    assert first.startswith("ftlaunch: job failed: node 1: rank 1 on "), result.stderr
    assert "RuntimeError: boom on rank 1 (exit code 1)" in first or "RuntimeError: boom on rank 1 (SIGABRT)" in first
    # the script's own last lines (its traceback), not the launcher's report
    tail = result.stderr.split("last lines of its output:\n", 1)[1]
    assert 'raise RuntimeError(f"boom on rank {args.fail_rank}")' in tail and "ChildFailedError" not in tail
    run_dir = only_run_dir(tmp_path / "runs")
    assert f"log: {run_dir}/logs/node-1.log" in result.stderr
    node1 = json.loads((run_dir / "status" / "node-1.json").read_text())
    assert node1["state"] == "failed" and node1["rank"] == 1 and node1["peer_lost"] is False
    assert node1["exit_code"] in (1, -6) and "boom on rank 1" in node1["error"]
    assert "RuntimeError: boom on rank 1" in node1["output_tail"]
    assert (run_dir / "logs" / "node-0.log").stat().st_size > 0


# ---------------------------------------------------------------- the dry run and bad input (in-process, fast)


def test_dry_run_shows_the_script_command_and_keeps_a_copy(tmp_path, capsys):
    recipe, script = write_job(tmp_path)
    code = main(["submit", str(recipe), "--script", str(script), "--nodes", "2", "--dry-run",
                 "--set", "train.lr=1e-3", "--", "--lr", "3e-5", "{port}x"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    run_dir = only_run_dir(tmp_path / "runs")
    # Slurm target: each node's launch line ends with the copy of the script and its arguments
    assert (f"--main_process_port '$PORT' -m launcher.train.user_script {run_dir}/script/train_mrpc.py --lr 3e-5 "
            "'{port}x'") in out
    assert "not used by your script (the built-in trainer's settings): train.lr" in out
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" in out
    assert_run_dir_keeps_the_script(run_dir, script, ["--lr", "3e-5", "{port}x"])
    accelerate = yaml.safe_load((run_dir / "accelerate.yaml").read_text())
    assert (accelerate["mixed_precision"], accelerate["num_processes"]) == (HOST_PRECISION, 2)
    assert "launcher.run.node" in (run_dir / "sbatch.sh").read_text()
    assert "model: null" in (run_dir / "recipe.yaml").read_text()


def test_no_recipe_file_needed(tmp_path, capsys, monkeypatch):
    _, script = write_job(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["submit", "--script", script.name, "--local", "--nodes", "2", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    run_dir = only_run_dir(tmp_path / "runs")
    assert run_dir.name.startswith("train_mrpc-")  # named after the script
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["world_size"] == 2 and plan["entrypoint"]["source"] == str(script)
    assert "--script train_mrpc.py" in (run_dir / "recipe.yaml").read_text()


def test_a_recipe_with_an_entrypoint_section(tmp_path, capsys):
    _, script = write_job(tmp_path)
    recipe = tmp_path / "with-entrypoint.yaml"
    recipe.write_text(f"name: e\nentrypoint:\n  script: {script}\n  args: [--steps, '2']\noutput_dir: {tmp_path / 'runs'}\n")
    assert main(["validate", str(recipe)]) == 0
    assert main(["submit", str(recipe), "--dry-run"]) == 0
    plan = json.loads((only_run_dir(tmp_path / "runs") / "plan.json").read_text())
    assert plan["launch_command"][-3:] == [plan["entrypoint"]["script"], "--steps", "2"]
    capsys.readouterr()


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--script", "missing.py"], "--script (entrypoint.script): script not found: "),
        (["--script", "notes.txt"], "--script (entrypoint.script): notes.txt is not a Python file (.py)"),
        (["--script", "."], "--script (entrypoint.script): not a file: "),
    ],
)
def test_bad_script_is_one_line_exit_2(tmp_path, capsys, monkeypatch, args, phrase):
    recipe, _ = write_job(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    code = main(["submit", str(recipe), *args, "--local", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ftlaunch: error: ") and phrase in err, err
    assert not (tmp_path / "runs").exists()


def test_model_and_data_still_required_without_a_script(tmp_path, capsys):
    recipe, _ = write_job(tmp_path)
    code = main(["validate", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{recipe}: model: required field is missing" in err and f"{recipe}: data: required field is missing" in err


def test_words_after_double_dash_are_only_for_submit(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["status", "--", "x"])
    assert exc.value.code == 2 and "takes no arguments after --" in capsys.readouterr().err


# ---------------------------------------------------------------- failure explanations from a node's output


def _plan(procs_per_node: int = 1):
    from launcher.plan import HostFacts, make_plan
    from launcher.recipe.schema import Recipe

    recipe = Recipe.model_validate(
        {"name": "x", "entrypoint": {"script": "/x/train.py"}, "cluster": {"nodes": 2, "gpus_per_node": 0,
                                                                            "procs_per_node": procs_per_node}}
    )  # fmt: skip
    return make_plan(recipe, "local", "/runs/x", HostFacts(), local_port=29500)


TORCHRUN_REPORT = """\
E1122 00:52:40.079000 3092 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: {code}) local_rank: 1 (pid: 3124) of binary: python3
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 1423, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Root Cause (first observed failure):
[0]:
  time      : 2026-11-22_00:52:40
  host      : localhost
  rank      : 3 (local_rank: 1)
  exitcode  : {code} (pid: 3124)
  error_file: <N/A>
============================================================"""


def test_explanation_names_the_rank_from_the_launcher_report_and_keeps_the_script_lines():
    from launcher.run.script import explain_script_failure

    lines = ["[ftlaunch node 1] launch: ...", "step 1", "[rank3]: Traceback (most recent call last):",
             '[rank3]:   File "train.py", line 9, in <module>', "[rank3]: ValueError: bad batch",
             *TORCHRUN_REPORT.format(code=1).splitlines()]  # fmt: skip
    found = explain_script_failure(_plan(procs_per_node=2), 1, 1, lines)
    assert found["error"].endswith("failed: ValueError: bad batch (exit code 1)") and found["error"].startswith("rank 3 on ")
    assert (found["rank"], found["exit_code"], found["peer_lost"]) == (3, 1, False)
    assert found["output_tail"][-1] == "ValueError: bad batch" and not any("Root Cause" in x for x in found["output_tail"])


def test_explanation_of_a_killed_rank_and_of_a_plain_exit_code():
    from launcher.run.script import explain_script_failure

    killed = explain_script_failure(_plan(procs_per_node=2), 1, 1, ["step 7", *TORCHRUN_REPORT.format(code=-9).splitlines()])
    assert killed["error"].startswith("rank 3 on ") and killed["error"].endswith(
        "was killed by SIGKILL (out of memory?); last line: step 7"
    )
    # one process, no torchrun: accelerate launch runs the script directly and passes its exit code on
    plain = explain_script_failure(_plan(), 1, 3, ["loading", "giving up: no data"])
    assert plain["error"].endswith("exited with code 3; last line: giving up: no data") and plain["rank"] == 1
    silent = explain_script_failure(_plan(), 0, 2, [])
    assert silent["error"].endswith("exited with code 2 before printing anything") and silent["output_tail"] == []


def test_a_rank_that_only_lost_its_peer_says_so():
    from launcher.run.script import explain_script_failure

    lines = ["RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1234"]
    assert explain_script_failure(_plan(), 0, 1, lines)["peer_lost"] is True


# ---------------------------------------------------------------- the real Slurm dev cluster


def wait_final(job_id: str, timeout: float) -> str:
    from launcher.submit.slurm import job_states

    deadline = time.monotonic() + timeout
    while True:
        state = job_states([job_id]).states[job_id]
        if state.final:
            return state.state
        assert time.monotonic() < deadline, f"job {job_id}: still {state.describe()} after {timeout} s"
        time.sleep(0.5)


def slurm_submit(capsys, recipe: Path, script: Path, *args: str) -> tuple[str, Path]:
    code = main(["submit", str(recipe), "--script", str(script), "--nodes", "2",
                 "--set", "cluster.gpus_per_node=0", "--set", "cluster.partition=debug", *args])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, out + err
    match = re.search(r"submitted Slurm job (\d+) \(.*\): (.+)$", out, re.M)
    assert match, out
    return match.group(1), Path(match.group(2).strip())


def logs_of(run_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((run_dir / "logs").glob("*")))


@pytest.mark.e2e
@pytest.mark.slurm
def test_chapter3_script_on_two_slurm_nodes(slurm_cluster, tmp_path, tiny_model_dir, mrpc_dir, monkeypatch, capsys):
    monkeypatch.delenv("FTL_PYTHON", raising=False)
    recipe, script = write_job(tmp_path, time="10")
    args = script_args(tiny_model_dir, mrpc_dir)
    job_id, run_dir = slurm_submit(capsys, recipe, script, *args)
    state = wait_final(job_id, timeout=300)
    assert state == "COMPLETED", logs_of(run_dir)
    assert_trained_together(run_dir)
    assert_run_dir_keeps_the_script(run_dir, script, args[1:])
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"job    {job_id}: COMPLETED" in out and "node 1 state=done" in out, out


@pytest.mark.e2e
@pytest.mark.slurm
def test_a_failing_rank_on_slurm_is_named_in_its_node_status(
    slurm_cluster, tmp_path, tiny_model_dir, mrpc_dir, monkeypatch, capsys
):
    monkeypatch.delenv("FTL_PYTHON", raising=False)
    recipe, script = write_job(tmp_path, time="10")
    job_id, run_dir = slurm_submit(capsys, recipe, script, *script_args(tiny_model_dir, mrpc_dir, "--fail-rank", "1"))
    assert wait_final(job_id, timeout=300) == "FAILED", logs_of(run_dir)
    node1 = json.loads((run_dir / "status" / "node-1.json").read_text())
    assert node1["state"] == "failed" and node1["rank"] == 1, node1
    assert re.match(r"node 1: rank 1 on n2 failed: RuntimeError: boom on rank 1 \(", node1["error"]), node1
    assert main(["status", str(run_dir)]) == 0
    assert "boom on rank 1" in capsys.readouterr().out
