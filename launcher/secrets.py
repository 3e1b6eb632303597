"""Credentials reach the ranks through the environment (sbatch's --export=ALL, the local
supervisor's environment) and are never written into a run dir, a log or a generated script.

A name is taken for a credential when one of its `_`/`-` separated words is TOKEN, KEY, SECRET,
PASSWORD or CREDENTIAL(S) (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY; not TOKENIZERS_PARALLELISM).
"""

from __future__ import annotations

import re

KNOWN_SECRETS = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "COMET_API_KEY", "NEPTUNE_API_TOKEN",
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY",
)  # fmt: skip
SECRET_WORDS = frozenset({"TOKEN", "TOKENS", "KEY", "KEYS", "APIKEY", "SECRET", "SECRETS", "PASSWORD", "PASSWD",
                          "CREDENTIAL", "CREDENTIALS"})  # fmt: skip
REDACTED = "<redacted>"
_FLAG = re.compile(r"^-{1,2}([A-Za-z][\w.-]*)(=(.*))?$", re.DOTALL)
_ASSIGNMENT = re.compile(r"^([A-Za-z_][\w.]*)=(.*)$", re.DOTALL)


def looks_secret(name: str) -> bool:
    words = re.split(r"[_\-.]+", name.upper())
    return any(word in SECRET_WORDS for word in words)


def secret_argument(argv: list[str]) -> str | None:
    """The first word of `argv` that carries a credential (`--hf-token X`, `--api_key=X`, `WANDB_API_KEY=X`)."""
    for index, word in enumerate(argv):
        flag = _FLAG.match(word)
        takes_value = flag and (flag.group(2) or (index + 1 < len(argv) and not argv[index + 1].startswith("-")))
        if flag and looks_secret(flag.group(1)) and takes_value:
            return word.split("=", 1)[0]
        assignment = _ASSIGNMENT.match(word)
        if assignment and looks_secret(assignment.group(1).rsplit(".", 1)[-1]):
            return assignment.group(1)
    return None


def redact_argv(argv: list[str]) -> list[str]:
    """argv with the value of every credential-carrying word replaced by <redacted>."""
    out: list[str] = []
    redact_next = False
    for word in argv:
        if redact_next and not word.startswith("-"):
            out.append(REDACTED)
            redact_next = False
            continue
        redact_next = False
        flag = _FLAG.match(word)
        assignment = _ASSIGNMENT.match(word)
        if flag and looks_secret(flag.group(1)):
            if flag.group(2):
                out.append(f"{word.split('=', 1)[0]}={REDACTED}")
            else:
                out.append(word)
                redact_next = True
            continue
        if assignment and looks_secret(assignment.group(1).rsplit(".", 1)[-1]):
            out.append(f"{assignment.group(1)}={REDACTED}")
            continue
        out.append(word)
    return out
