"""Arguments shared by several verbs."""

from __future__ import annotations

import argparse

from launcher.recipe import Override, parse_override


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.lr=3e-5 (repeatable)",
    )


def overrides_from(args: argparse.Namespace, flags: dict[str, tuple[str, object]] | None = None) -> list[Override]:
    """--set values, then shortcut flags ({"cluster.nodes": ("--nodes", 2)}), the flags winning."""
    overrides = [parse_override(text) for text in args.overrides]
    for key, (flag, value) in (flags or {}).items():
        if value is not None:
            overrides.append(Override(key, value, f"{flag} {value}", origin=flag))
    return overrides
