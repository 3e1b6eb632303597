"""Download the recipe's Hub model, tokenizer and dataset into the Hugging Face cache the job will
use (HF_HOME / HF_HUB_CACHE / HF_DATASETS_CACHE as set here), for compute nodes without internet.
Run it on a machine with internet that shares that cache with the cluster (the login node).
--check only checks, offline, as `submit` does."""

from __future__ import annotations

import argparse
import os

from launcher.cli.options import add_override_arguments, overrides_from
from launcher.errors import UserError

HELP = "download a recipe's Hub model/tokenizer/dataset for offline compute nodes (--check: only check)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--check", action="store_true", help="only check, offline, that everything is cached")
    add_override_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from launcher.recipe import load_recipe
    from launcher.hfcache import OFFLINE_ENV, hf_cache_env
    from launcher.submit.prefetch import check_offline, hub_needs, prefetch

    recipe = load_recipe(args.recipe, overrides_from(args)).recipe
    cache = hf_cache_env()
    if args.check:
        problems = check_offline(recipe, args.recipe)
        if problems:
            raise UserError(*problems)
        print(f"{args.recipe}: everything the job needs is in the local cache ({cache['HF_HOME']})")
        return 0
    if not hub_needs(recipe):
        print(f"{args.recipe}: nothing to download (local model and data files)")
        return 0
    offline = [name for name in OFFLINE_ENV if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    if offline:
        raise UserError(f"{', '.join(offline)} set here: prefetch needs the Hub; unset it for this command")
    try:
        fetched = prefetch(recipe)
    except Exception as exc:  # network, auth, a missing repo: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"prefetch failed: {type(exc).__name__}: {first}") from None
    for line in fetched:
        print(line)
    problems = check_offline(recipe, args.recipe)
    if problems:
        raise UserError(*problems)
    print(f"ok: the job will find everything offline in {cache['HF_HOME']}")
    return 0
