"""What this host's CPU can do, read from /proc/cpuinfo (no torch import: the dry run stays fast).

bf16 autocast is fast only where the CPU has native bf16 (AVX512-BF16 or AMX); elsewhere torch
emulates it, and a MiniLM step was measured about 5x slower than in fp32.
FTL_CPUINFO names another file to read (a fake CPU for the tests).
"""

from __future__ import annotations

import os
from pathlib import Path

CPUINFO_ENV = "FTL_CPUINFO"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo_value(*keys: str) -> str | None:
    """The first processor's value for the first of `keys` that /proc/cpuinfo has."""
    path = Path(os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo_value("flags", "Features") or "").split())  # x86 / ARM


def cpu_model() -> str:
    return _cpuinfo_value("model name") or "unknown"


def cpu_family_model() -> str:
    """"family 25 model 1" (AMD Zen 3), "family 26 ..." (Zen 5): what a virtualised "AMD EPYC" name hides."""
    return f"family {_cpuinfo_value('cpu family') or '?'} model {_cpuinfo_value('model') or '?'}"


def cpu_vendor() -> str:
    """GenuineIntel, AuthenticAMD, ...; empty where unknown (ARM, not Linux)."""
    return _cpuinfo_value("vendor_id") or ""


def native_bf16() -> bool | None:
    """True/False where the flags are known; None where /proc/cpuinfo says nothing (not Linux)."""
    flags = cpu_flags()
    if not flags:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


SLOW_BF16 = (
    "bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX) runs about 5x slower than fp32: "
    "use --set train.precision=no (fp32)"
)
