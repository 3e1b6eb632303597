"""`ftlaunch` entry point: dispatch to one module per verb; user errors are one line each, exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from launcher import __version__
from launcher.errors import JobFailed, UserError

VERBS = ("validate", "submit", "status", "logs", "cancel", "ls", "prefetch", "collect")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftlaunch",
        description="Distributed fine-tuning from one YAML recipe: plan, render, submit (Slurm or local), collect.",
    )
    parser.add_argument("--version", action="version", version=f"ftlaunch {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for name in VERBS:
        module = importlib.import_module(f"launcher.cli.{name}")
        sub = verbs.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Words after the first `--` are passed through untouched (submit: the user's script's arguments);
    # argparse alone would mix them up with the verb's own positional arguments.
    words, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    parser = build_parser()
    args = parser.parse_args(words)
    if passthrough is not None and not getattr(args, "takes_passthrough", False):
        parser.error(f"ftlaunch {args.verb} takes no arguments after --")
    args.passthrough = passthrough
    args.argv = ["ftlaunch", *argv]  # recorded in env.json
    try:
        return args.run(args) or 0
    except UserError as exc:
        for problem in exc.problems:
            print(f"ftlaunch: error: {problem}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"ftlaunch: job failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ftlaunch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `ftlaunch ls | head -3`: the reader is gone, which is not an error of ours. Point stdout at
        # /dev/null so that Python's final flush does not raise again on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
