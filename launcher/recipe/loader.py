"""Load a recipe: YAML file + overrides -> validated `Recipe`, or every problem at once.

Messages look like `recipes/mrpc.yaml:14: train.lr: Input should be greater than 0 (got -1)`;
values that came from `--set` say so instead of a line number.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from launcher.errors import UserError
from launcher.recipe import rules
from launcher.recipe.overrides import Override, apply_overrides
from launcher.recipe.schema import Recipe
from launcher.recipe.yamlsource import YamlSource, read_yaml_file


@dataclass(frozen=True)
class LoadedRecipe:
    recipe: Recipe
    path: str


NO_RECIPE_FILE = "(no recipe file)"


def load_recipe(path: str | Path | None, overrides: list[Override] | None = None) -> LoadedRecipe:
    """Validate `path` with `overrides` applied. Raises UserError listing every problem.
    `path` None: no file, the recipe is the overrides alone (`ftlaunch submit --script train.py`)."""
    overrides = overrides or []
    source = read_yaml_file(path) if path is not None else YamlSource(NO_RECIPE_FILE, {})
    if source.problems and not source.data:
        raise UserError(*source.problems)
    data = apply_overrides(source.data, overrides)
    overridden = {o.key: o for o in overrides}
    problems = list(source.problems)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += [_format_pydantic_error(err, source, overridden) for err in exc.errors()]
        raise UserError(*problems) from None
    recipe = resolve_paths(recipe)
    problems += [_format(source, overridden, field, message) for field, message in rules.check(recipe)]
    if problems:
        raise UserError(*problems)
    return LoadedRecipe(recipe, str(path) if path is not None else NO_RECIPE_FILE)


def load_resolved(path: str | Path) -> Recipe:
    """Read the resolved recipe a run dir holds (already validated at submit time)."""
    source = read_yaml_file(path)
    if source.problems:
        raise UserError(*source.problems)
    try:
        return Recipe.model_validate(source.data)
    except ValidationError as exc:
        raise UserError(*[_format_pydantic_error(err, source, {}) for err in exc.errors()]) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def resolve_paths(recipe: Recipe) -> Recipe:
    """Make local paths absolute (relative to the current directory): ranks on other nodes
    start elsewhere, and the resolved recipe must mean the same thing there."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    def maybe_local(name: str | None) -> str | None:
        # Hub ids (bert-base-uncased, org/name) stay as they are; existing dirs and explicit paths resolve.
        if name is None:
            return None
        if name.startswith((".", "/", "~")) or Path(name).expanduser().is_dir():
            return absolute(name)
        return name

    data, model, entrypoint = recipe.data, recipe.model, recipe.entrypoint
    if model is not None:
        model = model.model_copy(
            update={"name_or_path": maybe_local(model.name_or_path), "tokenizer": maybe_local(model.tokenizer)}
        )
    if data is not None:
        data = data.model_copy(
            update={
                "files": {split: absolute(p) for split, p in data.files.items()} if data.files else None,
                "cache_dir": absolute(data.cache_dir) if data.cache_dir else None,
            }
        )
    if entrypoint is not None:
        entrypoint = entrypoint.model_copy(update={"script": absolute(entrypoint.script)})
    cluster = recipe.cluster
    container = cluster.container
    if container and container.runtime == "apptainer" and "://" not in container.image:
        container = container.model_copy(update={"image": absolute(container.image)})
    cluster = cluster.model_copy(update={"container": container})
    return recipe.model_copy(
        update={
            "model": model, "data": data, "entrypoint": entrypoint, "cluster": cluster,
            "output_dir": absolute(recipe.output_dir),
        }
    )  # fmt: skip


def _format(source: YamlSource, overridden: dict[str, Override], field: str, message: str) -> str:
    for key, override in overridden.items():
        # the override set this field, a field inside it, or created it (`--set trian.lr=...` makes `trian`)
        if field == key or field.startswith(key + ".") or key.startswith(field + "."):
            return f"{override.describe(field)}: {message}"
    line = source.line_of(field)
    where = f"{source.display_name}:{line}" if line else source.display_name
    return f"{where}: {field}: {message}"


def _format_pydantic_error(err: dict[str, Any], source: YamlSource, overridden: dict[str, Override]) -> str:
    loc = [str(part) for part in err["loc"]]
    field = ".".join(loc) or "(recipe)"
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _field_names(loc[:-1])
        guess = _suggest(loc[-1], known)
        hint = f"did you mean {guess!r}?" if guess else f"known keys: {', '.join(known)}"
        message = f"unknown key ({hint})"
    elif kind == "missing":
        message = "required field is missing"
    else:
        message = err["msg"]
        value = err.get("input")
        if not isinstance(value, (dict, list)) and value is not None:
            message += f" (got {value!r})"
    return _format(source, overridden, field, message)


# Hugging Face TrainingArguments / run_glue.py names people carry over, and what they are called here.
_ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "per_device_batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "lr_scheduler_type": "scheduler",
    "fp16": "precision",
    "bf16": "precision",
    "model_name_or_path": "name_or_path",
    "max_seq_length": "max_length",
    "evaluation_strategy": "eval_strategy",
}


def _suggest(name: str, known: list[str]) -> str | None:
    """The known key `name` was probably meant as, or None."""
    lowered = name.lower()
    alias = _ALIASES.get(lowered)
    if alias in known:
        return alias
    # a known key that is one word of the typo (lr_rate -> lr), before fuzzy matching, which would
    # rank a long unrelated key higher (lr_rate -> eval_strategy)
    words = lowered.split("_")
    for candidate in known:
        if candidate == lowered or candidate in words:
            return candidate
    prefixed = [candidate for candidate in known if candidate.startswith(lowered + "_")]  # gpus -> gpus_per_node
    if len(prefixed) == 1:
        return prefixed[0]
    guess = difflib.get_close_matches(lowered, known, n=1)
    return guess[0] if guess else None


def _field_names(loc: list[str]) -> list[str]:
    """Names allowed at `loc` (a dotted path into the schema), for "did you mean" hints."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = _model_in(annotation)
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # Optional[Model]
        found = _model_in(arg)
        if found:
            return found
    return None
