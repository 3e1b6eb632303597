"""`--set section.key=value` overrides, applied to the raw recipe before validation.

Values are read as YAML scalars/flow collections (`3e-5`, `true`, `[a, b]`, `null`), so they get the
same type checking as values written in the file.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from launcher.errors import UserError
from launcher.recipe.yamlsource import load_yaml

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    text: str  # as typed, for messages
    origin: str = "--set"  # the flag it came from (--nodes is an override of cluster.nodes)

    def describe(self, field: str) -> str:
        return f"--set {field}" if self.origin == "--set" else f"{self.origin} ({field})"


def parse_override(text: str, flag: str = "--set") -> Override:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} train.lr=3e-5")
    if not _KEY.match(key):
        raise UserError(f"{flag} {text!r}: {key!r} is not a dotted key like train.lr or data.files.train")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. an unbalanced bracket): take the text as a string
    return Override(key, value, text)


def apply_overrides(data: dict[str, Any], overrides: list[Override], flag: str = "--set") -> dict[str, Any]:
    """Return a copy of `data` with every override applied (intermediate sections are created)."""
    result = copy.deepcopy(data)
    for override in overrides:
        parts = override.key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise UserError(f"{flag} {override.text!r}: {where} is a {type(child).__name__}, not a section")
            node = child
        node[parts[-1]] = override.value
    return result
