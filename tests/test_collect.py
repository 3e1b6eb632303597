"""`ftlaunch collect`: reports built from real run dirs, produced by real short local jobs through the
CLI (a 2-"node" run and a 1-node run of a tiny BERT on real MRPC rows); restarts and failures are
made from copies of those real run dirs; stragglers and divergence from synthetic records."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from ftl_support import MRPC_RECIPE, ftlaunch, local_mrpc_overrides, read_records
from launcher.cli.main import main
from launcher.collect import collect_run
from launcher.collect.compare import compare_rows
from launcher.collect.ranks import node_summaries, rank_summaries, sync_check, totals
from launcher.collect.records import merge
from launcher.collect.render import summary_rows


def _submit(out: Path, model_dir: Path, mrpc_dir: Path, *flags: str, **fields) -> Path:
    before = set(out.iterdir()) if out.exists() else set()
    overrides = local_mrpc_overrides(model_dir, mrpc_dir, out, **fields)
    result = ftlaunch("submit", MRPC_RECIPE, "--local", *flags, *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = [p for p in set(out.iterdir()) - before if not p.name.startswith(".")]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, mrpc_dir) -> dict:
    """Two real runs in one output dir: A on 2 local nodes (8 steps, eval every 4), B on 1 node."""
    out = tmp_path_factory.mktemp("collect") / "runs"
    fields = {"train.max_steps": 8, "train.eval_strategy": "steps", "train.eval_steps": 4, "train.save_strategy": "no"}
    a = _submit(out, tiny_model_dir, mrpc_dir, "--nodes", "2", **fields)
    b = _submit(out, tiny_model_dir, mrpc_dir, "--nodes", "1", **{"train.lr": 1e-4, "train.save_strategy": "no"})
    return {"out": out, "a": a, "b": b}


@pytest.fixture(scope="module")
def report_a(runs) -> dict:
    """`ftlaunch collect RUN` through the real console entry point, on the 2-node run."""
    result = ftlaunch("collect", runs["a"], timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "synchronised" in result.stdout and "wrote report.json" in result.stdout
    return json.loads((runs["a"] / "report.json").read_text())


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("model", "tensorboard")))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------- one real 2-node run


@pytest.mark.e2e
def test_two_node_report_adds_up(runs, report_a):
    report = report_a
    plan = json.loads((runs["a"] / "plan.json").read_text())
    results = json.loads((runs["a"] / "results.json").read_text())
    assert report["state"]["state"] == "done" and report["state"]["complete"]
    assert report["config"]["world_size"] == 2 and report["config"]["nodes"] == 2
    assert report["config"]["effective_batch_size"] == plan["effective_batch_size"]
    config = report["config"]
    assert (config["precision"], config["padding"], config["backend"]) == ("no", "dynamic", "ddp")
    assert report["restarts"] == 0 and report["train"]["last_step"] == 8

    # per node = sum over its ranks; total = sum over nodes
    assert [n["node"] for n in report["nodes"]] == [0, 1] and [n["ranks"] for n in report["nodes"]] == [[0], [1]]
    for node in report["nodes"]:
        members = [r for r in report["ranks"] if r["node"] == node["node"]]
        assert node["samples_per_s"] == pytest.approx(sum(r["samples_per_s"] for r in members), abs=1e-6)
        assert node["tokens_per_s"] == pytest.approx(sum(r["tokens_per_s"] for r in members), abs=1e-6)
    for key in ("samples_per_s", "tokens_per_s"):
        assert report["throughput"][key] == pytest.approx(sum(n[key] for n in report["nodes"]), abs=1e-6)
    assert all(r["samples_per_s"] > 0 and r["last_step"] == 8 and r["train_records"] == 8 for r in report["ranks"])

    # every rank logged the same param checksum at every step
    assert report["sync"]["synchronised"] is True and report["sync"]["first_divergence_step"] is None
    assert report["sync"]["steps_checked"] == 8

    # eval: final = results.json's, best = the best of the logged evals, rows counted once
    assert report["eval"]["final"]["metrics"] == results["final_eval"]["metrics"]
    assert report["eval"]["rows"] == 51 and report["eval"]["count"] == 2
    history = [r for r in read_records(runs["a"], "eval") if r["rank"] == 0]
    for name in ("validation_accuracy", "validation_f1"):
        assert report["eval"]["best"][name]["value"] == max(h["metrics"][name] for h in history)
    assert report["eval"]["best"]["validation_loss"]["value"] == min(h["metrics"]["validation_loss"] for h in history)

    # report.md holds the same rows as the terminal table
    text = (runs["a"] / "report.md").read_text()
    for key, value in summary_rows(report):
        assert f"| {key} | {value.replace('|', chr(92) + '|')} |" in text
    assert "| synchronised | true" in text


@pytest.mark.e2e
def test_merged_metrics_are_every_record_once_in_step_order(runs, report_a):
    merged = jsonl(runs["a"] / "metrics.jsonl")
    raw = read_records(runs["a"])
    assert len(merged) == len(raw) == report_a["records"]["merged"]
    keys = [(r["type"], r["rank"], r.get("step")) for r in merged]
    assert len(set(keys)) == len(keys)
    steps = [r["step"] for r in merged if "step" in r]
    assert steps == sorted(steps)
    assert merged[0]["type"] == "setup" and merged[-1]["type"] == "summary"


@pytest.mark.e2e
def test_curves_png_is_valid_and_holds_the_logged_series(runs, report_a):
    from PIL import Image

    curves = report_a["curves"]
    with Image.open(runs["a"] / curves["path"]) as image:
        image.verify()
    with Image.open(runs["a"] / curves["path"]) as image:
        assert image.format == "PNG" and list(image.size) == curves["size"] == [1500, 450]
        assert len(image.convert("RGB").getcolors(1 << 20)) > 50  # something was drawn
    train_steps = {r["step"] for r in read_records(runs["a"], "train")}
    evals = [r for r in read_records(runs["a"], "eval") if r["rank"] == 0]
    series = curves["series"]
    assert series["train_loss"] == series["train_loss_ema"] == series["lr"] == len(train_steps) == 8
    assert series["validation_accuracy"] == series["validation_f1"] == series["validation_loss"] == len(evals) == 2


# ---------------------------------------------------------------- restarts and partial runs


@pytest.mark.e2e
@pytest.mark.parametrize("resume_record", [True, False], ids=["resume-record", "inferred-resume"])
def test_a_restarted_run_merges_to_the_newest_attempt(tmp_path, runs, report_a, resume_record):
    """No requeue can happen here (no preemptible Slurm), so the restart is simulated at the records
    level on a copy of the real 2-node run: attempt 0 is cut at step 6 (preempted after its step-4
    checkpoint), attempt 1 resumes from step 4 (with a `resume` record, or without: then its first
    train step - 1) and logs steps 5..8 again with different values, then its eval and summary."""
    run = copy_run(runs["a"], tmp_path / "restarted")
    resume_step, shift = 4, 1000.0
    for path in sorted((run / "metrics").glob("rank-*.jsonl")):
        first = jsonl(path)
        kept = [r for r in first if r["type"] in ("setup", "train", "eval") and r.get("step", 0) <= 6]
        checkpoint = next(i for i, r in enumerate(kept) if r["type"] == "eval" and r["step"] == resume_step)
        kept.insert(checkpoint + 1, dict(kept[checkpoint], type="checkpoint", path="step-00000004"))
        del kept[checkpoint + 1]["metrics"]
        redo = [dict(r, attempt=1, time=r["time"] + shift) for r in first
                if r.get("step", 0) > resume_step or r["type"] == "summary"]  # fmt: skip
        for r in redo:
            if r["type"] == "train":
                r["loss"] += 1.0
            if r["type"] == "eval":
                r["metrics"] = dict(r["metrics"], validation_accuracy=0.75)
        setup = dict(first[0], attempt=1, time=first[0]["time"] + shift)
        resume = [{"type": "resume", "step": resume_step, **{k: first[0][k] for k in ("rank", "node", "host")},
                   "attempt": 1, "time": setup["time"]}] if resume_record else []  # fmt: skip
        write_jsonl(path, kept + [setup] + resume + redo)  # as launcher.train writes them

    report = collect_run(run)
    assert report["restarts"] == 1 and report["resumed_from"] == {"1": resume_step}
    merged = jsonl(run / "metrics.jsonl")
    for rank in (0, 1):
        train = [r for r in merged if r["type"] == "train" and r["rank"] == rank]
        assert [r["step"] for r in train] == list(range(1, 9))  # every step exactly once
        assert [r["attempt"] for r in train] == [0] * 4 + [1] * 4
        original = {r["step"]: r["loss"] for r in read_records(runs["a"], "train") if r["rank"] == rank}
        assert all(r["loss"] == pytest.approx(original[r["step"]] + (1.0 if r["step"] > 4 else 0.0)) for r in train)
        evals = [(r["step"], r["attempt"]) for r in merged if r["type"] == "eval" and r["rank"] == rank]
        assert evals == [(4, 0), (8, 1)]
        assert [(r["type"], r["step"]) for r in merged if r["rank"] == rank and r.get("step") == 4][-2:] == (
            [("checkpoint", 4), ("resume", 4)] if resume_record else [("eval", 4), ("checkpoint", 4)])
    keys = [(r["type"], r["rank"], r.get("step")) for r in merged]
    assert len(keys) == len(set(keys))
    assert report["eval"]["final"]["metrics"]["validation_accuracy"] == 0.75
    assert report["records"]["dropped"] == 2 * (2 + 1)  # per rank: attempt-0 steps 5 and 6, attempt-0 setup
    assert report["sync"]["synchronised"] is True and report["curves"]["series"]["train_loss"] == 8
    assert all(r["attempt"] == 1 and r["last_step"] == 8 for r in report["ranks"])
    assert report["time"]["wall_seconds"] >= shift


@pytest.mark.e2e
@pytest.mark.parametrize("state", ["failed", "running"])
def test_a_partial_run_still_gets_a_report_that_says_so(tmp_path, runs, report_a, state):
    run = copy_run(runs["a"], tmp_path / state)
    (run / "results.json").unlink()
    for report_file in ("report.json", "report.md", "curves.png", "metrics.jsonl"):
        (run / report_file).unlink(missing_ok=True)
    for path in (run / "metrics").glob("rank-*.jsonl"):
        write_jsonl(path, [r for r in jsonl(path) if r["type"] != "summary" and r.get("step", 0) <= 5])
        with path.open("a") as handle:
            handle.write('{"type": "train", "step": 6, "lo')  # a line cut mid-write
    for kind, index in (("rank", 1), ("node", 1)):
        status = run / "status" / f"{kind}-{index}.json"
        extra = {"error": "RuntimeError: boom"} if state == "failed" else {}
        status.write_text(json.dumps({**json.loads(status.read_text()), "state": state, **extra}))

    report = collect_run(run)
    assert report["state"]["state"] == state and report["state"]["complete"] is False
    assert any("no results.json" in note for note in report["state"]["notes"])
    assert report["train"]["last_step"] == 5 and report["eval"]["final"]["step"] == 4
    assert len(report["records"]["unreadable_lines"]) == 2
    if state == "failed":
        assert "rank 1: RuntimeError: boom" in report["state"]["errors"]
    assert (run / "curves.png").stat().st_size > 0 and "PARTIAL" in (run / "report.md").read_text()


# ---------------------------------------------------------------- compare, sweeps, bad input


@pytest.mark.e2e
def test_compare_two_runs_side_by_side_writes_nothing_with_no_write(runs, report_a, capsys):
    def snapshot(run: Path) -> dict:
        return {p: p.stat().st_mtime_ns for p in run.rglob("*")}

    before = {run: snapshot(run) for run in (runs["a"], runs["b"])}
    assert main(["collect", str(runs["a"]), str(runs["b"]), "--no-write", "--markdown"]) == 0
    text = capsys.readouterr().out
    assert {run: snapshot(run) for run in (runs["a"], runs["b"])} == before
    header = text.splitlines()[0]
    assert runs["a"].name in header and runs["b"].name in header
    assert "| lr | 5e-05 | 0.0001 |" in text
    assert "| world size | 2 | 1 |" in text

    reports = [collect_run(runs["a"], write=False), collect_run(runs["b"], write=False)]
    rows = {label: (cells, marks) for label, cells, marks in compare_rows(reports)}
    for label, key, pick in (("samples/s", "samples_per_s", max), ("tokens/s", "tokens_per_s", max)):
        values = [r["throughput"][key] for r in reports]
        assert rows[label][1] == [v == pick(values) for v in values]
    finals = [r["eval"]["final"]["metrics"]["validation_loss"] for r in reports]
    assert rows["final validation_loss"][1] == [v == min(finals) and len(set(finals)) > 1 for v in finals]
    assert rows["world size"][1] == [False, False]  # not a quantity to win


@pytest.mark.e2e
def test_a_sweep_dir_and_a_run_name_resolve(runs, report_a, capsys):
    assert main(["collect", str(runs["out"]), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "ftlaunch compare: 2 runs" in out
    assert main(["collect", runs["b"].name, "--output-dir", str(runs["out"]), "--no-write"]) == 0
    assert "ftlaunch report" in capsys.readouterr().out


def test_a_path_that_is_not_a_run_dir_is_one_line_exit_2(tmp_path):
    missing = tmp_path / "no-such-run"
    result = ftlaunch("collect", missing, timeout=120)
    assert result.returncode == 2
    message = f"ftlaunch: error: {missing}: no such run dir, and no run of that name under runs/"
    assert result.stderr.strip().splitlines() == [message]
    (tmp_path / "empty").mkdir()
    assert main(["collect", str(tmp_path / "empty")]) == 2
    assert main(["collect", "x", "--export", str(tmp_path)]) == 2


# ---------------------------------------------------------------- synthetic records


def train_record(rank: int, step: int, seconds: float, node: int | None = None, **extra) -> dict:
    return {"type": "train", "step": step, "rank": rank, "node": rank // 2 if node is None else node, "host": "h",
            "attempt": 0, "loss": 0.5, "lr": 1e-5, "samples_per_s": 8 / seconds, "tokens_per_s": 800 / seconds,
            "step_seconds": seconds, "time": float(step), **extra}  # fmt: skip


def test_a_rank_slower_than_the_median_by_the_margin_is_a_straggler():
    seconds = {0: 0.10, 1: 0.105, 2: 0.098, 3: 0.15}  # rank 3 is 50% slower than the median
    records = merge([train_record(rank, step, s) for step in range(1, 6) for rank, s in seconds.items()])
    ranks, flagged = rank_summaries(records, margin=0.2)
    assert flagged["ranks"] == [3]
    assert flagged["median_step_seconds"] == pytest.approx(statistics.median(seconds.values()))
    assert [r["straggler"] for r in ranks] == [False, False, False, True]
    assert ranks[3]["mean_step_seconds"] == pytest.approx(0.15)
    assert ranks[0]["samples_per_s"] == pytest.approx(80.0)
    nodes = node_summaries(ranks)
    assert [n["stragglers"] for n in nodes] == [[], [3]]
    assert nodes[0]["samples_per_s"] == pytest.approx(80 + 8 / 0.105, abs=1e-3)
    assert totals(nodes)["samples_per_s"] == pytest.approx(sum(n["samples_per_s"] for n in nodes))
    assert rank_summaries(records, margin=0.6)[1]["ranks"] == []  # 50% slower is within a 60% margin


def test_eval_time_is_not_counted_as_training_time():
    records = [train_record(0, 1, 0.1), {"type": "eval", "step": 1, "rank": 0, "attempt": 0, "seconds": 0.4,
               "metrics": {}}, train_record(0, 2, 0.5)]  # fmt: skip  (step 2's window holds the eval)
    (rank,), _ = rank_summaries(merge(records))
    assert rank["mean_step_seconds"] == pytest.approx(0.1)


def test_diverged_ranks_are_reported_at_their_first_differing_step():
    records = [train_record(rank, step, 0.1, param_checksum=100.0 + step + (0.5 if rank == 1 and step >= 3 else 0))
               for step in range(1, 6) for rank in (0, 1)]  # fmt: skip
    sync = sync_check(merge(records))
    assert sync["synchronised"] is False and sync["first_divergence_step"] == 3 and sync["steps_checked"] == 5
    assert sync_check(merge([train_record(0, 1, 0.1)]))["synchronised"] is None  # nothing to compare


def test_two_restarts_keep_only_the_newest_attempt_past_each_resume():
    def attempt(n: int, steps) -> list[dict]:
        return [dict(train_record(0, s, 0.1), attempt=n, loss=float(n)) for s in steps]

    records = attempt(0, range(1, 13)) + attempt(1, range(11, 16)) + attempt(2, range(11, 21))
    merged = merge(records)
    expected = [(s, 0) for s in range(1, 11)] + [(s, 2) for s in range(11, 21)]
    assert [(r["step"], r["attempt"]) for r in merged] == expected


def test_a_graceful_preemption_keeps_its_checkpoint_and_orders_the_resume_after_it():
    def rec(kind: str, attempt: int, step: int) -> dict:
        return {"type": kind, "step": step, "rank": 0, "attempt": attempt, "time": float(attempt * 100 + step)}

    first = [dict(train_record(0, s, 0.1)) for s in range(1, 7)] + [rec("checkpoint", 0, 6), rec("preempted", 0, 6)]
    second = [{"type": "setup", "rank": 0, "attempt": 1}, rec("resume", 1, 6)]
    second += [dict(train_record(0, s, 0.1), attempt=1) for s in range(7, 10)]
    merged = merge([{"type": "setup", "rank": 0, "attempt": 0}, *first, *second])
    assert [(r["type"], r.get("step"), r["attempt"]) for r in merged][6:11] == [
        ("train", 6, 0), ("checkpoint", 6, 0), ("preempted", 6, 0), ("resume", 6, 1), ("train", 7, 1)]
    assert merged[0] == {"type": "setup", "rank": 0, "attempt": 1}
