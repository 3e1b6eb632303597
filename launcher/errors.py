"""Errors the user can fix. The CLI prints them one per line, exits 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a recipe, a flag, a path. Each problem is one self-contained line."""

    def __init__(self, *problems: str):
        if not problems:
            raise ValueError("UserError needs at least one problem")
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class JobFailed(Exception):
    """A launched job ended badly; the message names the node/rank and what to look at."""

    def __init__(self, message: str, exit_code: int = 1):
        self.exit_code = exit_code
        super().__init__(message)
