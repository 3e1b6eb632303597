"""Check a recipe and report every problem at once (file:line: field: message)."""

from __future__ import annotations

import argparse

from launcher.cli.options import add_override_arguments, overrides_from
from launcher.recipe import load_recipe

HELP = "check a recipe; every error at once, with its field and line"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    add_override_arguments(parser)


def run(args: argparse.Namespace) -> int:
    loaded = load_recipe(args.recipe, overrides_from(args))
    print(f"{args.recipe}: ok ({loaded.recipe.name})")
    return 0
