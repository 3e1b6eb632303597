"""How a rank's process ends once its work is done: at once, without Python's teardown.

After the last collective, gloo's worker threads may still be releasing its work, which takes the
GIL; a thread that takes it while the interpreter finalizes aborts the whole process ("terminate
called without an active exception"), after its work is done.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def end_process(code: int) -> NoReturn:
    """Exit now with `code`. Whatever the process wrote must be closed by now: only the std streams
    are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
