"""The plan as a pure function: world size, batch and step arithmetic, device decisions, ports,
the plan.json round trip, and the row counts of local data files it is computed from.

Expected numbers in the tables are worked out by hand from the formulas in the comments."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from launcher.errors import UserError
from launcher.plan import HostFacts, Plan, make_plan, port_for_job
from launcher.plan.datasize import count_rows, split_rows
from launcher.plan.plan import PORT_SHELL_EXPR
from launcher.recipe.schema import Recipe

NO_GPU = HostFacts(gpus=0, python="/venv/bin/python")
EIGHT_GPUS = HostFacts(gpus=8, python="/venv/bin/python")


def recipe(**sections) -> Recipe:
    """A Hub-dataset recipe; keyword arguments update sections: recipe(train={"lr": 1e-4})."""
    data = {
        "name": "plan-test",
        "model": {"name_or_path": "bert-base-uncased"},
        "data": {"dataset": "glue", "config": "mrpc", "text_fields": ["sentence1", "sentence2"]},
        "train": {"per_device_batch_size": 8},
        "cluster": {"nodes": 1, "gpus_per_node": 1},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return Recipe.model_validate(data)


def plan_for(r: Recipe, target="slurm", host=NO_GPU, rows=None, port=None) -> Plan:
    return make_plan(r, target, "/runs/example", host, rows, local_port=port)


# ---------------------------------------------------------------------------------------------
# world size and effective batch

# nodes, gpus_per_node, procs_per_node, per_device, accumulation -> world, effective
BATCH_TABLE = [
    (1, 1, None, 8, 1, 1, 8),  # 1 x 1; 8 x 1 x 1
    (2, 4, None, 8, 1, 8, 64),  # procs default to one per GPU: 2 x 4 = 8; 8 x 1 x 8 = 64
    (2, 4, 2, 8, 1, 4, 32),  # 2 x 2 = 4; 8 x 1 x 4 = 32
    (4, 8, None, 16, 4, 32, 2048),  # 4 x 8 = 32; 16 x 4 x 32 = 2048
    (3, 2, None, 5, 3, 6, 90),  # 3 x 2 = 6; 5 x 3 x 6 = 90
    (1, 0, None, 8, 2, 1, 16),  # CPU: one process by default; 8 x 2 x 1
    (2, 0, 3, 4, 1, 6, 24),  # CPU, 3 processes per node: 2 x 3 = 6; 4 x 1 x 6 = 24
]


@pytest.mark.parametrize("nodes, gpus, procs, per_device, accum, world, effective", BATCH_TABLE)
def test_world_size_and_effective_batch(nodes, gpus, procs, per_device, accum, world, effective):
    cluster = {"nodes": nodes, "gpus_per_node": gpus, "procs_per_node": procs}
    train = {"per_device_batch_size": per_device, "gradient_accumulation_steps": accum}
    plan = plan_for(recipe(cluster=cluster, train=train))
    assert plan.world_size == world == nodes * plan.procs_per_node
    assert plan.effective_batch_size == effective == per_device * accum * world
    assert plan.per_device_batch_size == per_device and plan.gradient_accumulation_steps == accum
    assert plan.eval_batch_size == 2 * per_device  # default: twice the training batch
    assert plan.device == ("cuda" if gpus else "cpu")


# ---------------------------------------------------------------------------------------------
# steps per epoch: micro = ceil(ceil(rows / world) / per_device); steps = ceil(micro / accumulation)

# rows, per_device, accumulation, nodes, gpus_per_node -> micro batches per process, steps per epoch
STEPS_TABLE = [
    (3668, 8, 1, 1, 1, 459, 459),  # MRPC, 1 GPU: 3668/8 = 458.5 -> 459
    (3668, 8, 1, 2, 4, 58, 58),  # world 8: 3668/8 = 458.5 -> 459 rows each; 459/8 = 57.4 -> 58
    (3668, 8, 4, 1, 1, 459, 115),  # 459 micro batches / 4 = 114.75 -> 115 (last window is partial)
    (3668, 16, 2, 1, 4, 58, 29),  # world 4: 917 rows each; 917/16 = 57.3 -> 58; 58/2 = 29
    (3668, 8, 1, 2, 8, 29, 29),  # world 16: 3668/16 = 229.25 -> 230; 230/8 = 28.75 -> 29
    (8551, 32, 1, 1, 1, 268, 268),  # CoLA: 8551/32 = 267.2 -> 268
    (8551, 32, 1, 2, 1, 134, 134),  # world 2: 4275.5 -> 4276; 4276/32 = 133.6 -> 134
    (1000, 8, 3, 3, 1, 42, 14),  # world 3: 333.3 -> 334; 334/8 = 41.75 -> 42; 42/3 = 14
    (100, 10, 1, 5, 2, 1, 1),  # world 10: 10 rows each -> 1 micro batch -> 1 step
    (7, 4, 3, 1, 2, 1, 1),  # fewer rows than one batch: 7/2 -> 4 rows each -> 1 -> 1
    (9, 4, 1, 1, 2, 2, 2),  # world 2: 4.5 -> 5 rows each (the short shard is padded); 5/4 -> 2
    (17, 4, 1, 2, 2, 2, 2),  # world 4: 4.25 -> 5 rows each; 5/4 -> 2
    (1, 8, 1, 4, 8, 1, 1),  # one row, world 32: every process still takes one (padded) batch
]


@pytest.mark.parametrize("rows, per_device, accum, nodes, gpus, micro, steps", STEPS_TABLE)
def test_steps_per_epoch(rows, per_device, accum, nodes, gpus, micro, steps):
    r = recipe(
        train={"per_device_batch_size": per_device, "gradient_accumulation_steps": accum, "epochs": 3},
        cluster={"nodes": nodes, "gpus_per_node": gpus},
    )
    plan = plan_for(r, rows={"train": rows, "validation": 408})
    assert plan.micro_batches_per_epoch == micro
    assert plan.steps_per_epoch == steps
    assert plan.steps_per_epoch == math.ceil(math.ceil(math.ceil(rows / (nodes * gpus)) / per_device) / accum)
    assert plan.epochs == 3 and plan.total_steps == 3 * steps
    assert plan.train_rows == rows and plan.eval_rows == 408


def test_hub_dataset_steps_unknown():
    plan = plan_for(recipe(), rows={})
    assert plan.train_rows is None and plan.steps_per_epoch is None
    assert plan.total_steps is None and plan.warmup_steps is None and plan.epochs is None


def test_empty_training_split_refused():
    with pytest.raises(UserError) as info:
        plan_for(recipe(), rows={"train": 0})
    assert "data.files.train" in info.value.problems[0] and "empty" in info.value.problems[0]


# rows, max_steps -> steps per epoch, epochs, total (1 GPU, batch 8: 3668 rows -> 459 steps/epoch)
@pytest.mark.parametrize(
    "rows, max_steps, per_epoch, epochs, total",
    [
        (3668, 100, 459, 1, 100),  # fewer steps than one epoch: 1 (partial) epoch
        (3668, 1000, 459, 3, 1000),  # 1000/459 = 2.18 -> 3 epochs, stopped at step 1000
        (3668, 918, 459, 2, 918),  # exactly two epochs
        (None, 500, None, None, 500),  # Hub dataset: total known, epochs not
    ],
)
def test_max_steps_overrides_epochs(rows, max_steps, per_epoch, epochs, total):
    r = recipe(train={"epochs": 7, "max_steps": max_steps})
    plan = plan_for(r, rows={"train": rows} if rows else None)
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps) == (per_epoch, epochs, total)


# 3668 rows, batch 8, 1 GPU, 3 epochs: 459 x 3 = 1377 optimizer steps
@pytest.mark.parametrize(
    "warmup_steps, warmup_ratio, expected",
    [
        (0, 0.0, 0),
        (0, 0.06, 83),  # 0.06 x 1377 = 82.62 -> 83 (transformers rounds up)
        (0, 0.1, 138),  # 137.7 -> 138
        (0, 1.0, 1377),
        (50, 0.0, 50),  # explicit steps
    ],
)
def test_warmup_steps(warmup_steps, warmup_ratio, expected):
    r = recipe(train={"epochs": 3, "warmup_steps": warmup_steps, "warmup_ratio": warmup_ratio})
    plan = plan_for(r, rows={"train": 3668})
    assert plan.total_steps == 1377
    assert plan.warmup_steps == expected


def test_warmup_ratio_with_max_steps():
    plan = plan_for(recipe(train={"max_steps": 250, "warmup_ratio": 0.1}))
    assert plan.warmup_steps == 25


# ---------------------------------------------------------------------------------------------
# device decisions


def test_local_without_gpu_runs_on_cpu():
    plan = plan_for(recipe(cluster={"gpus_per_node": 1}), target="local", host=NO_GPU, port=29400)
    assert plan.device == "cpu"
    assert plan.gpus_per_node == 0
    assert plan.procs_per_node == 1 and plan.world_size == 1
    assert any("no CUDA GPU" in note for note in plan.notes)
    assert (plan.rendezvous.head, plan.rendezvous.port) == ("127.0.0.1", 29400)


def test_local_with_gpus_runs_on_cuda():
    plan = plan_for(recipe(cluster={"gpus_per_node": 8}), target="local", host=EIGHT_GPUS, port=29400)
    assert plan.device == "cuda"
    assert (plan.gpus_per_node, plan.procs_per_node, plan.world_size) == (8, 8, 8)
    assert plan.notes == []


def test_local_two_nodes_share_the_gpus():
    plan = plan_for(recipe(cluster={"nodes": 2, "gpus_per_node": 4}), target="local", host=EIGHT_GPUS, port=29400)
    assert (plan.device, plan.world_size) == ("cuda", 8)


def test_local_cpu_recipe_stays_on_cpu_even_with_gpus():
    plan = plan_for(recipe(cluster={"gpus_per_node": 0, "procs_per_node": 2}), target="local", host=EIGHT_GPUS)
    assert (plan.device, plan.world_size, plan.gpus_per_node) == ("cpu", 2, 0)


def test_slurm_cpu_partition():
    plan = plan_for(recipe(cluster={"nodes": 2, "gpus_per_node": 0}), target="slurm", host=EIGHT_GPUS)
    assert (plan.device, plan.procs_per_node, plan.world_size, plan.gpus_per_node) == ("cpu", 1, 2, 0)


def test_slurm_gpus_do_not_depend_on_the_submitting_host():
    plan = plan_for(recipe(cluster={"nodes": 2, "gpus_per_node": 4}), target="slurm", host=NO_GPU)
    assert (plan.device, plan.world_size, plan.gpus_per_node) == ("cuda", 8, 4)
    assert plan.rendezvous.port is None and plan.rendezvous.head == "$HEAD"


@pytest.mark.parametrize(
    "target, cluster, where",
    [
        ("local", {"gpus_per_node": 1}, "this host has no CUDA GPU"),
        ("slurm", {"gpus_per_node": 0}, "cluster.gpus_per_node is 0"),
    ],
)
def test_fp16_refused_on_cpu(target, cluster, where):
    with pytest.raises(UserError) as info:
        plan_for(recipe(cluster=cluster, train={"precision": "fp16"}), target=target, host=NO_GPU)
    (problem,) = info.value.problems
    assert problem.startswith("train.precision:") and "fp16" in problem and where in problem


def test_bf16_and_fp16_allowed_where_they_run():
    assert plan_for(recipe(cluster={"gpus_per_node": 0}, train={"precision": "bf16"})).precision == "bf16"
    plan = plan_for(recipe(train={"precision": "fp16"}), target="local", host=EIGHT_GPUS)
    assert (plan.device, plan.precision) == ("cuda", "fp16")


@pytest.mark.parametrize(
    "nodes, gpus, procs, host_gpus, processes",
    [
        (1, 4, None, 2, 4),  # 4 processes on a 2-GPU host
        (2, 2, None, 2, 4),  # 2 local "nodes" x 2
        (2, 8, 4, 4, 8),
    ],
)
def test_too_many_local_gpu_processes(nodes, gpus, procs, host_gpus, processes):
    r = recipe(cluster={"nodes": nodes, "gpus_per_node": gpus, "procs_per_node": procs})
    with pytest.raises(UserError) as info:
        plan_for(r, target="local", host=HostFacts(gpus=host_gpus))
    (problem,) = info.value.problems
    assert f"{processes} processes" in problem and f"{host_gpus} GPU(s)" in problem
    # the same recipe on Slurm is fine: every node has its own GPUs
    assert plan_for(r, target="slurm").world_size == processes


def test_one_process_per_gpu():
    with pytest.raises(UserError) as info:
        plan_for(recipe(cluster={"gpus_per_node": 2, "procs_per_node": 4}), target="slurm")
    (problem,) = info.value.problems
    assert problem.startswith("cluster.procs_per_node:") and "4 processes per node" in problem
    # fewer processes than GPUs is fine; on a CPU-only host the GPU count of the recipe does not apply
    assert plan_for(recipe(cluster={"gpus_per_node": 4, "procs_per_node": 2}), target="slurm").world_size == 2
    plan = plan_for(recipe(cluster={"gpus_per_node": 1, "procs_per_node": 2}), target="local", host=NO_GPU)
    assert (plan.device, plan.world_size) == ("cpu", 2)


def test_deepspeed_stage_default():
    assert plan_for(recipe(distributed={"backend": "deepspeed"})).zero_stage == 2
    assert plan_for(recipe(distributed={"backend": "deepspeed", "zero_stage": 3})).zero_stage == 3
    assert plan_for(recipe()).zero_stage is None


def test_plan_is_pure():
    r = recipe(cluster={"nodes": 2, "gpus_per_node": 4})
    assert plan_for(r, rows={"train": 3668}) == plan_for(r, rows={"train": 3668})


def test_commands_use_run_dir_and_python():
    plan = plan_for(recipe(cluster={"nodes": 2, "gpus_per_node": 4}))
    argv = plan.launch_argv(1, "node-a", 12346)
    assert argv[0] == "/venv/bin/python"
    assert argv[argv.index("--config_file") + 1] == "/runs/example/accelerate.yaml"
    assert argv[argv.index("--machine_rank") + 1] == "1"
    assert argv[argv.index("--main_process_ip") + 1] == "node-a"
    assert argv[argv.index("--main_process_port") + 1] == "12346"
    assert argv[-1] == "/runs/example"
    node = plan.node_argv(0, "node-a", 12346)
    assert node[:3] == ["/venv/bin/python", "-m", "launcher.run.node"] and "{port}" not in node


# ---------------------------------------------------------------------------------------------
# ports

JOB_IDS = [0, 1, 2, 4999, 9999, 10000, 10001, 123456, 987654321, 4294967295]


def test_port_for_job_matches_bash():
    script = "; ".join(f"SLURM_JOB_ID={job}; echo {PORT_SHELL_EXPR}" for job in JOB_IDS)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert [int(p) for p in out] == [port_for_job(job) for job in JOB_IDS]


@pytest.mark.parametrize("job", JOB_IDS)
def test_port_for_job_with_exported_env(job):
    out = subprocess.run(
        ["bash", "-c", f"echo {PORT_SHELL_EXPR}"],
        env={**os.environ, "SLURM_JOB_ID": str(job)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(out) == port_for_job(job)


@pytest.mark.parametrize("job", JOB_IDS)
def test_port_for_job_range(job):
    port = port_for_job(job)
    assert port % 2 == 0
    assert 1024 <= port and port + 1 < 32768  # the pair stays below Linux's ephemeral range


def test_consecutive_jobs_get_disjoint_port_pairs():
    ports = [port_for_job(job) for job in range(5000, 5100)]
    pairs = {p for port in ports for p in (port, port + 1)}
    assert len(pairs) == 2 * len(ports)


# ---------------------------------------------------------------------------------------------
# plan.json round trip


@pytest.mark.parametrize(
    "target, r, host, rows, port",
    [
        ("slurm", recipe(cluster={"nodes": 2, "gpus_per_node": 4}), NO_GPU, {"train": 3668, "validation": 408}, None),
        ("local", recipe(cluster={"gpus_per_node": 0, "procs_per_node": 2}), NO_GPU, None, 29400),
        ("slurm", recipe(distributed={"backend": "deepspeed", "zero_stage": 3}), NO_GPU, {"train": 10}, None),
        ("local", recipe(cluster={"gpus_per_node": 1}), NO_GPU, {"train": 5}, 29400),  # has a note
    ],
)
def test_plan_round_trip(target, r, host, rows, port):
    plan = plan_for(r, target=target, host=host, rows=rows, port=port)
    assert Plan.from_dict(plan.to_dict()) == plan
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    changed = plan.to_dict()
    changed["rendezvous"]["join_timeout_s"] += 1
    assert Plan.from_dict(changed) != plan


# ---------------------------------------------------------------------------------------------
# row counts of local files


def local_recipe(files: dict[str, Path], **data) -> Recipe:
    return recipe(
        data={"dataset": None, "config": None, "files": {k: str(v) for k, v in files.items()}, **data},
    )


def test_jsonl_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}\n   \n')  # blank lines are not rows
    assert count_rows(path, "json") == 3


def test_jsonl_rows_in_a_json_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("".join(json.dumps({"a": i}) + "\n" for i in range(4)))
    assert count_rows(path, "json") == 4


def test_json_array_rows(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("\n  " + json.dumps([{"a": i, "text": "x\ny"} for i in range(6)], indent=2))
    assert count_rows(path, "json") == 6


def test_csv_rows_with_quoted_multiline_field(tmp_path):
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        writer.writerow(["line one\nline two\nline three", 1])
        writer.writerow(['with "quotes", and a comma', 0])
        writer.writerow(["plain", 1])
    assert len(path.read_text().splitlines()) == 6  # header + 3 lines for the first row + 1 + 1
    assert count_rows(path, "csv") == 3


def test_tsv_rows(tmp_path):
    path = tmp_path / "train.tsv"
    # MSR-style: quotes are text, not quoting (read as quoted, rows 1 and 2 would merge into one field)
    path.write_text('Quality\t#1 String\t#2 String\n1\t"He said hi\tshe said hi\n0\ta\tb"\n1\tc\td\n')
    assert count_rows(path, "tsv") == 3


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"sentence": [f"s{i}" for i in range(11)], "label": [i % 2 for i in range(11)]}), path)
    assert count_rows(path, "parquet") == 11


def test_unreadable_file_counts_as_unknown(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("a\tb\n" + "x" * 200_000 + "\ty\n")  # beyond the csv module's field limit
    assert count_rows(path, "tsv") is None
    assert count_rows(tmp_path / "missing.jsonl", "json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2,")
    assert count_rows(bad, "json") is None


def test_split_rows_capped_by_max_samples(tmp_path):
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text('{"a": 1}\n' * 50)
    validation.write_text('{"a": 1}\n' * 20)
    files = {"train": train, "validation": validation}
    assert split_rows(local_recipe(files)) == {"train": 50, "validation": 20}
    assert split_rows(local_recipe(files, max_train_samples=30)) == {"train": 30, "validation": 20}
    assert split_rows(local_recipe(files, max_train_samples=500, max_eval_samples=7)) == {"train": 50, "validation": 7}


def test_split_rows_declared_format(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("sentence,label\na,1\nb,0\n")
    assert split_rows(local_recipe({"train": train}, format="csv")) == {"train": 2}


def test_split_rows_hub_dataset():
    assert split_rows(recipe()) == {}


def test_rows_flow_into_the_plan(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"a": 1}\n' * 100)
    r = local_recipe({"train": train}, max_train_samples=64)
    plan = plan_for(r, rows=split_rows(r))
    assert plan.train_rows == 64
    assert plan.steps_per_epoch == 8  # 64 rows / batch 8, 1 process


# ---------------------------------------------------------------------------------------------
# another layout, the same global batch


def test_workable_layouts_keep_the_global_batch():
    from launcher.plan.elastic import accumulation_for, workable_worlds

    assert workable_worlds(8, 4) == [1, 2]
    assert workable_worlds(64, 8) == [1, 2, 4, 8]
    assert accumulation_for(64, 8, 4, "--nodes") == 2
    with pytest.raises(UserError, match=r"global batch 16 \(8 per device\) cannot be split over 3 process\(es\); "
                                        r"layouts that keep it have 1, 2 process\(es\)"):  # fmt: skip
        accumulation_for(16, 8, 3, "--nodes")


def test_an_elastic_range_is_checked_for_every_node_count():
    elastic = plan_for(recipe(cluster={"nodes": 2, "gpus_per_node": 4, "min_nodes": 1}))
    assert elastic.min_nodes == 1 and elastic.effective_batch_size == 64
    assert "elastic: 1-2 nodes, global batch 64 kept (1 node(s): accumulation 2; 2 node(s): accumulation 1)" in elastic.notes
    from launcher.render.sbatch import sbatch_header_lines

    assert "#SBATCH --nodes=1-2" in sbatch_header_lines(elastic, recipe(cluster={"nodes": 2, "gpus_per_node": 4,
                                                                                "min_nodes": 1}))  # fmt: skip
    with pytest.raises(UserError, match=r"cluster.min_nodes: the global batch 24 \(8 per device\) cannot be split over 2"):
        plan_for(recipe(cluster={"nodes": 3, "gpus_per_node": 1, "min_nodes": 2}))
    with pytest.raises(UserError, match="cluster.min_nodes: 3 is more than cluster.nodes"):
        plan_for(recipe(cluster={"nodes": 2, "min_nodes": 3}))
    with pytest.raises(UserError, match="an elastic node range is for Slurm jobs"):
        plan_for(recipe(cluster={"nodes": 2, "gpus_per_node": 0, "min_nodes": 1}), target="local")
    with pytest.raises(UserError, match="needs the built-in trainer with ddp"):
        plan_for(recipe(cluster={"nodes": 2, "min_nodes": 1}, distributed={"backend": "deepspeed"}))
