"""Recipes: shipped recipes validate, `--set` overrides are type checked, YAML 1.1 quirks do not
bite, and every malformed recipe fails with exit 2 and one `ftlaunch: error:` line per problem
that names the field (and line) to fix, never a traceback and never a half-written run dir."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from launcher.cli.main import main
from launcher.errors import UserError
from launcher.recipe import load_recipe, parse_override
from launcher.recipe.overrides import apply_overrides

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(REPO.glob("recipes/*.yaml"))

ROW = '{"sentence": "a short sentence", "label": 1}\n'


@pytest.fixture
def data_files(tmp_path: Path) -> dict[str, Path]:
    """Two tiny JSON Lines splits (3 and 2 rows)."""
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text(ROW * 3)
    validation.write_text(ROW * 2)
    return {"train": train, "validation": validation}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


def base_recipe(data_files: dict[str, Path], out_dir: Path) -> dict:
    """A valid recipe (CPU, local files) that each malformed case breaks in one place."""
    return {
        "name": "tiny",
        "model": {"name_or_path": "bert-base-uncased", "num_labels": 2},
        "data": {
            "files": {"train": str(data_files["train"]), "validation": str(data_files["validation"])},
            "text_fields": ["sentence"],
        },
        "train": {"epochs": 1, "per_device_batch_size": 2, "lr": 5.0e-5, "precision": "no"},
        "metrics": ["accuracy"],
        "distributed": {"backend": "ddp"},
        "cluster": {"nodes": 1, "gpus_per_node": 0, "time": "00:10:00"},
        "output_dir": str(out_dir),
    }


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of(path: Path, pattern: str) -> int:
    """1-based line of the only line of `path` matching `pattern` (found independently of the loader)."""
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if re.search(pattern, text)]
    assert len(hits) == 1, (pattern, hits)
    return hits[0]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# shipped recipes


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_recipe_validates(recipe: Path, capsys):
    code, out, err = run_cli(capsys, ["validate", str(recipe)])
    assert code == 0, err
    assert err == ""
    assert "ok" in out


def test_there_are_shipped_recipes():
    assert {p.name for p in SHIPPED} >= {"mrpc.yaml", "cola.yaml"}


# ---------------------------------------------------------------------------------------------
# overrides


def test_overrides_change_fields_with_their_types(repo_root: Path):
    plain = load_recipe(repo_root / "recipes/mrpc.yaml").recipe
    overrides = [parse_override("train.lr=3e-5"), parse_override("cluster.nodes=2")]
    recipe = load_recipe(repo_root / "recipes/mrpc.yaml", overrides).recipe
    assert plain.train.lr != 3e-5 and plain.cluster.nodes != 2  # the overrides really change something
    assert recipe.train.lr == 3e-5 and type(recipe.train.lr) is float
    assert recipe.cluster.nodes == 2 and type(recipe.cluster.nodes) is int
    # everything else is untouched
    assert recipe.model_copy(update={"train": plain.train, "cluster": plain.cluster}) == plain


def test_overrides_through_the_cli(repo_root: Path, capsys):
    code, out, err = run_cli(
        capsys, ["validate", str(repo_root / "recipes/mrpc.yaml"), "--set", "train.lr=3e-5", "--set", "cluster.nodes=2"]
    )
    assert (code, err) == (0, "")


def test_override_value_is_type_checked(repo_root: Path, capsys):
    code, out, err = run_cli(capsys, ["validate", str(repo_root / "recipes/mrpc.yaml"), "--set", "train.lr=abc"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ftlaunch: error: --set train.lr:")
    assert "valid number" in lines[0] and "'abc'" in lines[0]


def test_override_int_field_refuses_fraction(repo_root: Path):
    with pytest.raises(UserError) as info:
        load_recipe(repo_root / "recipes/mrpc.yaml", [parse_override("cluster.nodes=2.5")])
    assert info.value.problems == [info.value.problems[0]]
    assert info.value.problems[0].startswith("--set cluster.nodes:")
    assert "integer" in info.value.problems[0]


def test_override_unknown_key(repo_root: Path, capsys):
    code, out, err = run_cli(capsys, ["validate", str(repo_root / "recipes/mrpc.yaml"), "--set", "train.nope=1"])
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("ftlaunch: error: --set train.nope: unknown key")
    # nothing resembles "nope": the hint lists the keys that exist
    assert "known keys:" in line and "epochs" in line and "lr" in line


@pytest.mark.parametrize(
    "typo, meant",
    [
        ("train.epoch", "epochs"),
        ("train.lr_rate", "lr"),  # not 'eval_strategy', which plain fuzzy matching ranks first
        ("train.learning_rate", "lr"),  # Hugging Face TrainingArguments name
        ("train.fp16", "precision"),
        ("cluster.gpus", "gpus_per_node"),
        ("data.text_field", "text_fields"),
        ("modle", "model"),
    ],
)
def test_unknown_key_did_you_mean(repo_root: Path, capsys, typo: str, meant: str):
    code, out, err = run_cli(capsys, ["validate", str(repo_root / "recipes/mrpc.yaml"), "--set", f"{typo}=1"])
    assert code == 2
    assert f"ftlaunch: error: --set {typo}: unknown key (did you mean {meant!r}?)" in err.splitlines()


def test_unknown_key_in_file_did_you_mean(tmp_path, data_files, out_dir, capsys):
    data = base_recipe(data_files, out_dir)
    data["train"]["warmup_ration"] = 0.1
    path = write_recipe(tmp_path / "r.yaml", data)
    code, out, err = run_cli(capsys, ["validate", str(path)])
    assert code == 2
    line = line_of(path, r"^\s+warmup_ration:")
    assert err.splitlines() == [
        f"ftlaunch: error: {path}:{line}: train.warmup_ration: unknown key (did you mean 'warmup_ratio'?)"
    ]


def test_override_creates_nested_sections(repo_root: Path, mrpc_dir: Path):
    overrides = [
        parse_override(f"data.files.train={mrpc_dir / 'train.jsonl'}"),
        parse_override(f"data.files.validation={mrpc_dir / 'validation.jsonl'}"),
        parse_override("data.dataset=null"),
        parse_override("data.config=null"),
    ]
    recipe = load_recipe(repo_root / "recipes/mrpc.yaml", overrides).recipe
    assert recipe.data.dataset is None and recipe.data.config is None
    assert recipe.data.files == {
        "train": str(mrpc_dir / "train.jsonl"),
        "validation": str(mrpc_dir / "validation.jsonl"),
    }


def test_apply_overrides_creates_and_does_not_mutate():
    raw = {"data": {"text_fields": ["a"]}}
    result = apply_overrides(raw, [parse_override("data.files.train=/x/train.jsonl"), parse_override("cluster.nodes=3")])
    assert result == {"data": {"text_fields": ["a"], "files": {"train": "/x/train.jsonl"}}, "cluster": {"nodes": 3}}
    assert raw == {"data": {"text_fields": ["a"]}}


@pytest.mark.parametrize(
    "text, value",
    [
        ("train.lr=3e-5", 3e-5),
        ("train.precision=no", "no"),
        ("cluster.time=1:30:00", "1:30:00"),
        ("data.dataset=null", None),
        ("data.group_by_length=true", True),
        ("metrics=[accuracy, f1]", ["accuracy", "f1"]),
        ("name=x; rm -rf ~", "x; rm -rf ~"),
        ("name=", ""),
        ("name=[unbalanced", "[unbalanced"),
    ],
)
def test_parse_override_values(text: str, value):
    override = parse_override(text)
    assert override.key == text.partition("=")[0]
    assert override.value == value and type(override.value) is type(value)


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=1", "1train=2"])
def test_parse_override_bad_syntax(text: str):
    with pytest.raises(UserError) as info:
        parse_override(text)
    assert "--set" in info.value.problems[0]


# ---------------------------------------------------------------------------------------------
# YAML 1.1 quirks


def test_yaml_quirks(tmp_path, data_files, out_dir):
    path = tmp_path / "quirks.yaml"
    text = yaml.safe_dump(base_recipe(data_files, out_dir), sort_keys=False)
    text = re.sub(r"precision: .*", "precision: no", text)
    text = re.sub(r"lr: .*", "lr: 3e-5", text)
    text = re.sub(r"time: .*", "time: 1:30:00", text)
    text = re.sub(r"^name: .*", "name: 2024-05-01", text, flags=re.M)
    path.write_text(text)
    # the same text read as YAML 1.1 would give False, the string '3e-5', the int 5400 and a date
    raw = yaml.safe_load(text)
    assert (raw["train"]["precision"], raw["train"]["lr"], raw["cluster"]["time"]) == (False, "3e-5", 5400)

    recipe = load_recipe(path).recipe
    assert recipe.train.precision == "no"
    assert recipe.cluster.time == "1:30:00"
    assert recipe.train.lr == 3e-5 and type(recipe.train.lr) is float
    assert recipe.name == "2024-05-01"


@pytest.mark.parametrize(
    "text, value",
    [
        ("v: no", "no"),
        ("v: off", "off"),
        ("v: yes", "yes"),
        ("v: true", True),
        ("v: 1:30:00", "1:30:00"),
        ("v: 3e-5", 3e-5),
        ("v: 1.0e-5", 1e-5),
        ("v: 2024-05-01", "2024-05-01"),  # not a date
        ("v: =", "="),  # not YAML 1.1's "value" type (which no safe loader can construct)
        ("v: ~", None),
        ("v: 0x10", 16),
    ],
)
def test_yaml12_scalars(text: str, value):
    from launcher.recipe.yamlsource import load_yaml

    loaded = load_yaml(text)["v"]
    assert loaded == value and type(loaded) is type(value)


def test_yaml_numbers_for_text_fields(tmp_path, data_files, out_dir):
    """Slurm minutes and environment values written as bare numbers are their text."""
    data = base_recipe(data_files, out_dir)
    data["cluster"].update(time=90, mem=64000, env={"OMP_NUM_THREADS": 4})
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", data)).recipe
    assert recipe.cluster.time == "90"
    assert recipe.cluster.mem == "64000"
    assert recipe.cluster.env == {"OMP_NUM_THREADS": "4"}


# ---------------------------------------------------------------------------------------------
# malformed recipes


@dataclass
class Bad:
    """One malformed recipe. `expect`: (field, key phrase) pairs, each on one error line.
    `line_at`: regex of the recipe line the first error must cite (`file:LINE: field`)."""

    id: str
    change: dict | None = None  # dotted key -> value (None deletes) applied to the base recipe
    text: str | None = None  # or the whole file
    edit: tuple[str, str] | None = None  # or (old, new): a text replacement in the base recipe's YAML
    args: list[str] = field(default_factory=list)
    expect: list[tuple[str, str]] = field(default_factory=list)
    line_at: str | None = None
    verbs: tuple[str, ...] = ("validate", "submit")
    path: str = "recipe.yaml"  # file name under tmp_path; "" for a missing file


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    if value is None:
        del data[last]
    else:
        data[last] = value


DS = "distributed"
CASES = [
    Bad("missing-file", path="", expect=[("does-not-exist.yaml", "recipe file not found")]),
    Bad("recipe-is-a-directory", path="adir", expect=[("adir", "is a directory")]),
    Bad(
        "yaml-syntax",
        text="name: tiny\nmodel:\n  name_or_path: bert: base\n",
        # line 3, column 21: the second ':' (after 16 chars of '  name_or_path: ' and 4 of 'bert')
        expect=[("recipe.yaml:3:21", "invalid YAML: mapping values are not allowed here")],
    ),
    Bad("yaml-tab", text="name: tiny\ntrain:\n\tlr: 1\n", expect=[("recipe.yaml:3:1", "invalid YAML")]),
    Bad("empty-file", text="", expect=[("recipe.yaml", "the recipe is empty")]),
    Bad("only-comments", text="# nothing here\n", expect=[("recipe.yaml", "the recipe is empty")]),
    Bad("top-level-list", text="- name: tiny\n- model: x\n", expect=[("recipe.yaml:1", "must be a mapping")]),
    Bad("top-level-scalar", text="just a string\n", expect=[("recipe.yaml:1", "must be a mapping")]),
    Bad(
        "duplicate-key",
        edit=("  lr: 5.0e-05\n", "  lr: 5.0e-05\n  lr: 0.001\n"),  # the second one is the duplicate
        expect=[("train.lr", "duplicate key")],
        line_at=r"^  lr: 0.001$",
    ),
    Bad("wrong-type", change={"train.epochs": "three"}, expect=[("train.epochs", "valid integer")], line_at=r"^\s+epochs:"),
    Bad(
        "wrong-type-section",
        change={"train": "fast"},
        expect=[("train", "valid dictionary")],
        line_at=r"^train:",
    ),
    Bad(
        "unknown-key",
        change={"train.lr_rate": 0.1},
        expect=[("train.lr_rate", "unknown key (did you mean 'lr'?)")],
        line_at=r"^\s+lr_rate:",
    ),
    Bad(
        "unknown-section",
        change={"trian": {"epochs": 1}},
        expect=[("trian", "did you mean 'train'?")],
        line_at=r"^trian:",
    ),
    Bad(
        "negative-batch-size",
        change={"train.per_device_batch_size": -8},
        expect=[("train.per_device_batch_size", "greater than or equal to 1")],
        line_at=r"^\s+per_device_batch_size:",
    ),
    Bad("zero-lr", change={"train.lr": 0}, expect=[("train.lr", "greater than 0")], line_at=r"^\s+lr:"),
    Bad(
        "nodes-zero-flag",
        args=["--nodes", "0"],
        expect=[("--nodes (cluster.nodes)", "greater than or equal to 1")],
        verbs=("submit",),
    ),
    Bad(
        "fp16-local-no-gpu",
        change={"cluster.gpus_per_node": 1},
        args=["--local", "--set", "train.precision=fp16"],
        expect=[("train.precision", "fp16 needs a CUDA GPU")],
        verbs=("submit",),
    ),
    Bad(
        "files-and-dataset",
        change={"data.dataset": "glue"},
        expect=[("data.files", "not both")],
        line_at=r"^\s+files:",
    ),
    Bad("no-data", change={"data.files": None}, expect=[("data.dataset", "no data")]),
    Bad("missing-model", change={"model": None}, expect=[("model", "required field is missing")]),
    Bad("missing-name", change={"name": None}, expect=[("name", "required field is missing")]),
    Bad(
        "empty-model-name",
        change={"model.name_or_path": "  "},
        expect=[("model.name_or_path", "at least 1 character")],
        line_at=r"^\s+name_or_path:",
    ),
    Bad(
        "bad-metric-name",
        change={"metrics": ["accuracy", "acc"]},
        expect=[("metrics.1", "got 'acc'")],
        line_at=r"^- acc$",
    ),
    Bad(
        "metric-not-for-regression",
        change={"model.num_labels": 1},
        expect=[("metrics.0", "'accuracy' does not apply to regression")],
        line_at=r"^- accuracy$",
    ),
    Bad(
        "regression-metric-for-classification",
        change={"metrics": ["pearson"]},
        expect=[("metrics.0", "'pearson' does not apply to classification")],
    ),
    Bad(
        "bad-scheduler",
        change={"train.scheduler": "cosin"},
        expect=[("train.scheduler", "got 'cosin'")],
        line_at=r"^\s+scheduler:",
    ),
    Bad(
        "eval-steps-missing",
        change={"train.eval_strategy": "steps"},
        expect=[("train.eval_steps", "set eval_steps")],
    ),
    Bad(
        "warmup-steps-and-ratio",
        change={"train.warmup_steps": 10, "train.warmup_ratio": 0.1},
        expect=[("train.warmup_ratio", "not both")],
        line_at=r"^\s+warmup_ratio:",
    ),
    Bad(
        "data-file-not-found",
        change={"data.files.train": "__TMP__/missing.jsonl"},
        expect=[("data.files.train", "file not found")],
        line_at=r"^\s+train: .*missing.jsonl",
    ),
    Bad(
        "data-file-not-found-override",
        args=["--set", "data.files.train=__TMP__/missing.jsonl"],
        expect=[("--set data.files.train", "file not found")],
    ),
    Bad(
        "no-file-for-eval-split",
        change={"data.files.validation": None},
        expect=[("data.files.validation", "no file for split 'validation'")],
    ),
    Bad(
        "unknown-extension",
        change={"data.files.train": "__TMP__/train.txt"},
        expect=[("data.files.train", "cannot tell the format")],
    ),
    Bad(
        "deepspeed-stage-4",
        change={f"{DS}.backend": "deepspeed", f"{DS}.zero_stage": 4},
        expect=[("distributed.zero_stage", "must be 0, 1, 2 or 3")],
        line_at=r"^\s+zero_stage:",
    ),
    Bad(
        "offload-with-stage-0",
        change={f"{DS}.backend": "deepspeed", f"{DS}.zero_stage": 0, f"{DS}.offload_optimizer": True},
        expect=[("distributed.offload_optimizer", "needs ZeRO stage 1, 2 or 3")],
    ),
    Bad(
        "offload-params-stage-2",
        change={f"{DS}.backend": "deepspeed", f"{DS}.zero_stage": 2, f"{DS}.offload_params": True},
        expect=[("distributed.offload_params", "needs ZeRO stage 3")],
    ),
    Bad(
        "zero-stage-with-ddp",
        change={f"{DS}.zero_stage": 2},
        expect=[("distributed.zero_stage", "only used with distributed.backend: deepspeed")],
    ),
    Bad(
        "bad-slurm-time",
        change={"cluster.time": "2h"},
        expect=[("cluster.time", "'2h' is not a Slurm time")],
        line_at=r"^\s+time:",
    ),
    Bad(
        "secret-in-cluster-env",
        change={"cluster.env": {"HF_TOKEN": "hf_abc"}},
        expect=[("cluster.env.HF_TOKEN", "secrets do not belong in a recipe")],
        line_at=r"^\s+HF_TOKEN:",
    ),
    Bad(
        "bad-env-name",
        change={"cluster.env": {"MY-VAR": "1"}},
        expect=[("cluster.env.MY-VAR", "not a valid environment variable name")],
    ),
    # one process per GPU: checked when planning (a CPU-only local run may start several processes)
    Bad(
        "procs-more-than-gpus",
        change={"cluster.gpus_per_node": 2, "cluster.procs_per_node": 4},
        expect=[("cluster.procs_per_node", "4 processes per node but 2 GPU")],
        verbs=("submit",),
    ),
    Bad(
        "procs-more-than-gpus-flags",
        args=["--gpus-per-node", "2", "--procs-per-node", "3"],
        expect=[("cluster.procs_per_node", "3 processes per node but 2 GPU")],
        verbs=("submit",),
    ),
    Bad(
        "override-lr-not-a-number",
        args=["--set", "train.lr=abc"],
        expect=[("--set train.lr", "valid number")],
    ),
    Bad(
        "override-into-a-scalar",
        args=["--set", "train.lr.value=1"],
        expect=[("train.lr.value=1", "train.lr is a float, not a section")],
    ),
    Bad("override-without-value", args=["--set", "train.lr"], expect=[("--set 'train.lr'", "expected KEY=VALUE")]),
    Bad(
        "three-text-fields",
        change={"data.text_fields": ["a", "b", "c"]},
        expect=[("data.text_fields", "at most 2 items")],
    ),
]


@pytest.mark.parametrize(
    "case, verb",
    [pytest.param(c, v, id=f"{v}-{c.id}") for c in CASES for v in c.verbs],
)
def test_malformed_recipe(case: Bad, verb: str, tmp_path: Path, data_files, out_dir, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU whatever machine runs this
    (tmp_path / "train.txt").write_text(ROW)
    (tmp_path / "adir").mkdir()
    recipe_path = tmp_path / (case.path or "does-not-exist.yaml")
    base = base_recipe(data_files, out_dir)
    if case.text is not None:
        recipe_path.write_text(case.text)
    elif case.edit is not None:
        text = yaml.safe_dump(base, sort_keys=False)
        assert case.edit[0] in text
        recipe_path.write_text(text.replace(*case.edit))
    elif case.path == "recipe.yaml":
        data = copy.deepcopy(base)
        for dotted, value in (case.change or {}).items():
            _set(data, dotted, value.replace("__TMP__", str(tmp_path)) if isinstance(value, str) else value)
        write_recipe(recipe_path, data)
    args = [a.replace("__TMP__", str(tmp_path)) for a in case.args]
    argv = [verb, str(recipe_path), *args] + (["--dry-run"] if verb == "submit" else [])

    code, out, err = run_cli(capsys, argv)

    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert lines, "no error printed"
    for line in lines:
        assert line.startswith("ftlaunch: error: "), line
    for where, phrase in case.expect:
        assert any(where in line and phrase in line for line in lines), (where, phrase, lines)
    if case.line_at:
        line_no = line_of(recipe_path, case.line_at)
        where = case.expect[0][0]
        assert f"{recipe_path}:{line_no}: {where}: " in err, (line_no, lines)
    if verb == "submit":
        # nothing written: no run dir, no staging dir, not even output_dir
        assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_many_malformed_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 20


def test_every_schema_error_reported_at_once(tmp_path, data_files, out_dir, capsys):
    data = base_recipe(data_files, out_dir)
    del data["model"]
    data["train"].update(per_device_batch_size=-1, epochs="three", scheduler="cosin", lr_rate=1)
    data["metrics"] = ["acc"]
    data["cluster"]["nodes"] = 0
    path = write_recipe(tmp_path / "r.yaml", data)
    code, out, err = run_cli(capsys, ["validate", str(path)])
    assert code == 2
    lines = err.strip().splitlines()
    expected = [
        ("model", "required field is missing"),
        ("train.per_device_batch_size", "greater than or equal to 1"),
        ("train.epochs", "valid integer"),
        ("train.scheduler", "got 'cosin'"),
        ("train.lr_rate", "did you mean 'lr'"),
        ("metrics.0", "got 'acc'"),
        ("cluster.nodes", "greater than or equal to 1"),
    ]
    assert len(lines) == len(expected), lines
    for where, phrase in expected:
        assert any(f": {where}: " in line and phrase in line for line in lines), (where, lines)
    for line in lines:
        assert line.startswith(f"ftlaunch: error: {path}")


def test_every_rule_error_reported_at_once(tmp_path, data_files, out_dir, capsys):
    data = base_recipe(data_files, out_dir)
    data["train"].update(warmup_steps=5, warmup_ratio=0.1, eval_strategy="steps")
    data["cluster"].update(time="soon", env={"WANDB_API_KEY": "x"})
    data["distributed"].update(backend="deepspeed", zero_stage=1, offload_params=True)
    data["data"]["files"]["train"] = str(tmp_path / "nope.jsonl")
    path = write_recipe(tmp_path / "r.yaml", data)
    code, out, err = run_cli(capsys, ["validate", str(path), "--set", "model.num_labels=1"])
    assert code == 2
    lines = err.strip().splitlines()
    expected = [
        ("data.files.train", "file not found"),
        ("train.warmup_ratio", "not both"),
        ("train.eval_steps", "set eval_steps"),
        ("metrics.0", "does not apply to regression"),
        ("distributed.offload_params", "needs ZeRO stage 3"),
        ("cluster.time", "not a Slurm time"),
        ("cluster.env.WANDB_API_KEY", "secrets do not belong"),
    ]
    assert len(lines) == len(expected), lines
    for where, phrase in expected:
        assert any(where in line and phrase in line for line in lines), (where, lines)
    # every problem is in the file (num_labels came from --set, but the error is about metrics.0)
    assert f"{path}:{line_of(path, r'^  time:')}: cluster.time: " in err
    assert "--set" not in err


def test_duplicate_key_reported_with_other_errors(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: a\nname: b\nmodel:\n  name_or_path: x\n  num_labels: 0\n")
    code, out, err = run_cli(capsys, ["validate", str(path)])
    assert code == 2
    assert f"ftlaunch: error: {path}:2: name: duplicate key" in err.splitlines()
    assert f"ftlaunch: error: {path}:5: model.num_labels: Input should be greater than or equal to 1 (got 0)" in err
    assert f"{path}: data: required field is missing" in err


def test_valid_base_recipe_passes(tmp_path, data_files, out_dir, capsys):
    """The malformed cases are malformed because of their one change, not because the base is bad."""
    path = write_recipe(tmp_path / "r.yaml", base_recipe(data_files, out_dir))
    assert run_cli(capsys, ["validate", str(path)])[0] == 0
    code, out, err = run_cli(capsys, ["submit", str(path), "--dry-run", "--local"])
    assert (code, err) == (0, "")
    assert len(list(out_dir.iterdir())) == 1
