"""Host memory that stays with the rank: no page faults for every step's large buffers.

glibc hands large allocations back to the kernel when they are freed (mmap'd chunks, and the heap's
top past a trim threshold that follows them), so each step faults its activations and gradients in
again: 20-30k minor faults and about 60 ms of system time per MiniLM step (fp32, batch 8) on these
VMs, a fifth of the step. Two settings, applied before torch allocates anything:
- glibc: a fixed mmap threshold at its maximum (32 MiB) and no trimming of the heap, so buffers
  under 32 MiB are served from, and returned to, the heap and reused in place;
- torch: buffers of 2 MiB and more on transparent huge pages (torch's own THP_MEM_ALLOC_ENABLE), so
  the ones glibc still maps (a word-embedding gradient: 45 MiB for MiniLM) fault 2 MiB at a time.
The heap then stays at the rank's peak instead of shrinking between steps; nothing else changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

TUNING_ENV = "FTL_KEEP_FREED_MEMORY"  # 0: glibc's and torch's defaults (to measure what this buys)
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # read by torch once, at its first CPU allocation

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger values on 64-bit
_NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Apply both settings; True where glibc took them. Call before torch is imported."""
    if os.environ.get(TUNING_ENV) == "0":
        return False
    if "torch" not in sys.modules:
        os.environ.setdefault(THP_ENV, "1")  # inherited by DataLoader workers too: harmless there
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (macOS, musl): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
