"""Read a YAML recipe file keeping the line of every key, so errors can point at it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: only true/false are booleans, `3e-5` is a float, and
    `1:30:00` stays a string (YAML 1.1 reads `no` as False and `1:30:00` as the integer 5400).
    YAML 1.2 has no implicit timestamps either: `2024-05-01` stays a string, not a date."""


def _yaml12_resolvers() -> None:
    resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in (
            "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    RecipeLoader.yaml_implicit_resolvers = resolvers
    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"), list("-+0123456789")
    )
    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
        list("-+0123456789."),
    )


_yaml12_resolvers()


def load_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class YamlSource:
    """The parsed mapping plus where each dotted key path was written."""

    display_name: str
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line_of(self, dotted: str) -> int | None:
        """Line of `dotted`, or of its closest written parent (a missing key points at its section)."""
        parts = dotted.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None


def read_yaml_file(path: str | Path) -> YamlSource:
    """Parse `path`. Syntax errors and duplicate keys are reported, not raised."""
    display = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return YamlSource(display, {}, problems=[f"{display}: recipe file not found"])
    except IsADirectoryError:
        return YamlSource(display, {}, problems=[f"{display}: is a directory, expected a YAML recipe file"])
    except PermissionError:
        return YamlSource(display, {}, problems=[f"{display}: permission denied"])
    except UnicodeDecodeError as exc:
        return YamlSource(display, {}, problems=[f"{display}: not UTF-8 text ({exc.reason} at byte {exc.start})"])
    return parse_yaml_text(text, display)


def parse_yaml_text(text: str, display: str) -> YamlSource:
    try:
        node = yaml.compose(text, Loader=RecipeLoader)
        data = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark else display
        return YamlSource(display, {}, problems=[f"{where}: invalid YAML: {exc.problem or exc}"])
    except yaml.YAMLError as exc:
        return YamlSource(display, {}, problems=[f"{display}: invalid YAML: {exc}"])
    if data is None:
        return YamlSource(display, {}, problems=[f"{display}: the recipe is empty"])
    if not isinstance(data, dict):
        return YamlSource(
            display, {}, problems=[f"{display}:1: the recipe must be a mapping of sections (name:, model:, data:, ...)"]
        )
    source = YamlSource(display, data)
    _index_lines(node, "", source)
    return source


def _index_lines(node: yaml.Node, prefix: str, source: YamlSource) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            line = key_node.start_mark.line + 1
            if key in seen:
                # PyYAML silently keeps the last value; a recipe with two `lr:` is a mistake.
                source.problems.append(f"{source.display_name}:{line}: {dotted}: duplicate key")
            seen.add(key)
            source.lines[dotted] = line
            _index_lines(value_node, dotted, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            dotted = f"{prefix}.{index}"
            source.lines[dotted] = item.start_mark.line + 1
            _index_lines(item, dotted, source)
