"""Progress on the main process only: a rich bar on a terminal, plain log lines in a log file."""

from __future__ import annotations

import sys


class LineProgress:
    """One line per logging step: readable in Slurm logs and `ftlaunch logs -f`."""

    def __init__(self, total: int):
        self.total = total

    def update(self, step: int, info: dict) -> None:
        parts = [f"step {step}/{self.total}"] + [f"{k} {v}" for k, v in info.items()]
        print("[train] " + "  ".join(parts), flush=True)

    def message(self, text: str) -> None:
        print(f"[train] {text}", flush=True)

    def close(self) -> None:
        pass


class BarProgress(LineProgress):
    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        super().__init__(total)
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
        )
        self._task = self._progress.add_task("train", total=total, info="")
        self._progress.start()

    def update(self, step: int, info: dict) -> None:
        text = "  ".join(f"{k} {v}" for k, v in info.items())
        self._progress.update(self._task, completed=step, info=text)

    def message(self, text: str) -> None:
        self._progress.console.print(text)

    def close(self) -> None:
        self._progress.stop()


class NoProgress(LineProgress):
    def update(self, step: int, info: dict) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def make_progress(is_main: bool, total: int) -> LineProgress:
    if not is_main:
        return NoProgress(total)
    return BarProgress(total) if sys.stdout.isatty() else LineProgress(total)
