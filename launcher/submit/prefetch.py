"""Compute nodes without internet: download what a recipe needs from the Hub into the cache the job
will use (`ftlaunch prefetch`), and check, as if HF_HUB_OFFLINE=1, that it is there (`submit`).

The check never imports torch, transformers or datasets in the ftlaunch process: models and
tokenizers are looked up with huggingface_hub's cache functions; a Hub dataset is loaded, offline,
by `datasets` in a subprocess. Local directories and files need nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.hfcache import OFFLINE_ENV, hf_cache_env
from launcher.recipe.schema import Recipe

CONFIG_FILES = ("config.json",)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Formats the training never reads (TF, Flax, ONNX, ...): not downloaded.
IGNORE_PATTERNS = [
    "*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "*.mlmodel", "tf_model*", "flax_model*", "rust_model*",
    "onnx/*", "openvino/*", "coreml/*", "*.gguf",
]  # fmt: skip


@dataclass(frozen=True)
class HubNeed:
    field: str  # the recipe field that names it
    kind: str  # model | tokenizer | dataset
    repo_id: str
    revision: str | None = None
    config: str | None = None  # dataset config

    def label(self) -> str:
        return f"{self.repo_id} (config {self.config})" if self.config else self.repo_id


def is_local(name: str) -> bool:
    # resolve_paths() made every local path absolute; anything else is a Hub id.
    return name.startswith("/")


def hub_needs(recipe: Recipe) -> list[HubNeed]:
    model = recipe.model
    needs: list[HubNeed] = []
    if model is None or recipe.data is None:  # a user's own script (entrypoint): it loads what it loads
        return needs
    if not is_local(model.name_or_path):
        needs.append(HubNeed("model.name_or_path", "model", model.name_or_path, model.revision))
    if model.tokenizer and not is_local(model.tokenizer):
        needs.append(HubNeed("model.tokenizer", "tokenizer", model.tokenizer, model.revision))
    if recipe.data.dataset:
        needs.append(HubNeed("data.dataset", "dataset", recipe.data.dataset, None, recipe.data.config))
    return needs


def _advice(recipe_path: str) -> str:
    return f"run ftlaunch prefetch {recipe_path} on a machine with internet, or pass --no-check"


def check_offline(recipe: Recipe, recipe_path: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per thing the job needs that would not resolve with HF_HUB_OFFLINE=1 (empty: all there)."""
    cache = hf_cache_env(environ)
    if recipe.model is None:  # a user's own script (entrypoint): nothing of ftlaunch's to check
        return []
    problems = local_problems(recipe)
    needs = hub_needs(recipe)
    separate_tokenizer = any(n.kind == "tokenizer" for n in needs)
    for need in needs:
        if need.kind == "dataset":
            continue
        problems += _check_repo(
            need, cache["HF_HUB_CACHE"], recipe_path, tokenizer=need.kind == "tokenizer" or not separate_tokenizer
        )
    datasets = [n for n in needs if n.kind == "dataset"]
    if datasets:
        problems += _check_dataset(recipe, datasets[0], cache, recipe_path, environ)
    return problems


def local_problems(recipe: Recipe) -> list[str]:
    """Local model and tokenizer dirs that are not there (the data files the recipe loader checked)."""
    problems = []
    for field_name, name in (
        ("model.name_or_path", recipe.model.name_or_path if recipe.model else None),
        ("model.tokenizer", recipe.model.tokenizer if recipe.model else None),
    ):
        if not name or not is_local(name):
            continue
        if not Path(name).exists():
            problems.append(f"{field_name}: {name} does not exist")
        elif field_name == "model.name_or_path" and not (Path(name) / "config.json").is_file():
            problems.append(f"{field_name}: {name} is not a Hugging Face model directory (no config.json)")
    return problems


def _cached(repo_id: str, filename: str, cache_dir: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    except Exception:  # an invalid repo id, an unreadable cache: not there
        return None
    return found if isinstance(found, str) else None


def _check_repo(need: HubNeed, hub_cache: str, recipe_path: str, tokenizer: bool) -> list[str]:
    where = f"the local Hugging Face cache ({hub_cache})"
    revision = f" at revision {need.revision}" if need.revision else ""
    if need.kind == "model":
        config = _cached(need.repo_id, "config.json", hub_cache, need.revision)
        if config is None:
            return [f"{need.field}: {need.repo_id}{revision} is not in {where}: {_advice(recipe_path)}"]
        problems = []
        if not _weights_cached(need, hub_cache):
            problems.append(
                f"{need.field}: {need.repo_id}{revision}: its weights ({', '.join(WEIGHT_FILES[::2])}) are not in "
                f"{where}: {_advice(recipe_path)}"
            )
        if tokenizer and not any(_cached(need.repo_id, f, hub_cache, need.revision) for f in TOKENIZER_FILES):
            problems.append(
                f"{need.field}: {need.repo_id}{revision}: its tokenizer files are not in {where}: "
                + _advice(recipe_path)
            )
        return problems
    if not any(_cached(need.repo_id, f, hub_cache, need.revision) for f in TOKENIZER_FILES):
        return [f"{need.field}: {need.repo_id}{revision} is not in {where}: {_advice(recipe_path)}"]
    return []


def _weights_cached(need: HubNeed, hub_cache: str) -> bool:
    for filename in WEIGHT_FILES:
        path = _cached(need.repo_id, filename, hub_cache, need.revision)
        if path is None:
            continue
        if not filename.endswith(".index.json"):
            return True
        try:  # sharded: every shard must be there
            shards = set(json.loads(Path(path).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        if all(_cached(need.repo_id, shard, hub_cache, need.revision) for shard in shards):
            return True
    return False


_DATASET_PROBE = r"""
import json, sys
name, config, cache_dir, splits = json.loads(sys.argv[1])
try:
    import datasets
    loaded = datasets.load_dataset(name, config, cache_dir=cache_dir)
except Exception as exc:
    print(json.dumps({"ok": False, "error": (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:300]}))
else:
    print(json.dumps({"ok": True, "splits": sorted(loaded)}))
"""


def _check_dataset(
    recipe: Recipe, need: HubNeed, cache: dict[str, str], recipe_path: str, environ: Mapping[str, str] | None
) -> list[str]:
    data = recipe.data
    where_dir = data.cache_dir or cache["HF_DATASETS_CACHE"]
    env = dict(os.environ if environ is None else environ)
    env.update(cache)
    env.update(OFFLINE_ENV)
    splits = [data.train_split] + ([data.eval_split] if data.eval_split else [])
    argv = [sys.executable, "-c", _DATASET_PROBE, json.dumps([need.repo_id, need.config, data.cache_dir, splits])]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        answer = {"ok": False, "error": "the offline load did not finish"}
    if not answer.get("ok"):
        return [
            f"{need.field}: {need.label()} is not in the local datasets cache ({where_dir}): {_advice(recipe_path)}"
        ]
    have = answer.get("splits", [])
    problems = []
    for field_name, split in (("data.train_split", data.train_split), ("data.eval_split", data.eval_split)):
        if split and split not in have:
            problems.append(
                f"{field_name}: the cached dataset {need.label()} has no split {split!r} (has: {', '.join(have)})"
            )
    return problems


# ----------------------------------------------------------------------------------- prefetch


def prefetch(recipe: Recipe, say=print) -> list[str]:
    """Download every Hub model/tokenizer/dataset of the recipe into the cache the job will use.
    Returns what was fetched (one line each). Needs internet; HF_*_OFFLINE must be unset."""
    cache = hf_cache_env()
    needs = hub_needs(recipe)
    done = []
    for need in needs:
        if need.kind == "dataset":
            continue
        from huggingface_hub import snapshot_download

        say(f"{need.field}: downloading {need.repo_id} into {cache['HF_HUB_CACHE']}")
        ignore = list(IGNORE_PATTERNS)
        if need.kind == "tokenizer":
            ignore += ["*.safetensors", "*.bin", "*.pt", "*.pth"]
        elif _has_safetensors(need, cache["HF_HUB_CACHE"]):
            ignore += ["pytorch_model*.bin"]  # transformers loads the safetensors copy
        path = snapshot_download(
            need.repo_id, revision=need.revision, cache_dir=cache["HF_HUB_CACHE"], ignore_patterns=ignore
        )
        done.append(f"{need.field}: {need.repo_id} -> {path}")
    for need in needs:
        if need.kind != "dataset":
            continue
        import datasets

        where = recipe.data.cache_dir or cache["HF_DATASETS_CACHE"]
        say(f"{need.field}: downloading {need.label()} into {where}")
        loaded = datasets.load_dataset(need.repo_id, need.config, cache_dir=recipe.data.cache_dir)
        done.append(f"{need.field}: {need.label()} -> splits {', '.join(sorted(loaded))}")
    return done


def _has_safetensors(need: HubNeed, hub_cache: str) -> bool:
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(need.repo_id, revision=need.revision)
    except Exception:
        return False
    return any(f.endswith(".safetensors") for f in files)
