"""Terminal output: a rich progress bar on a terminal, plain log lines elsewhere (CI logs, files, SLURM)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def wide_console(width: int = 160, **kwargs) -> Console:
    """A rich console; where the output is not a terminal (log files, CI, pipes) it is ``width`` columns wide, so
    tables are not wrapped to 80."""
    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=width, **kwargs)


class _Bar:
    def __init__(self, reporter: Reporter, progress: Progress | None, task, total: int, label: str):
        self.reporter, self.progress, self.task, self.total, self.label = reporter, progress, task, total, label
        self.last_plain = 0.0

    def update(self, completed: int, total: int | None = None, **stats) -> None:
        """Move to ``completed`` steps; ``total`` changes the number of steps (for work counted as it goes)."""
        text = "  ".join(_fmt(k, v) for k, v in stats.items())
        if total is not None:
            self.total = total
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, **({"total": total} if total is not None else {}),
                                 **({"stats": text} if stats else {}))
        elif stats:
            self.reporter.print(f"{self.label} {completed}/{self.total}  {text}")


def _fmt(key: str, value) -> str:
    if key == "lr":
        return f"lr {value:.2e}"
    if key == "ips":
        return f"{value:.1f} img/s"
    return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"


class Reporter:
    """Prints messages and drives progress bars; ``quiet`` silences everything but errors."""

    def __init__(self, console: Console | None = None, quiet: bool = False, progress: bool | None = None):
        self.console = console or wide_console(file=sys.stdout)  # log files and CI: no wrapping of the tables
        self.quiet = quiet
        self.show_bars = self.console.is_terminal if progress is None else progress

    def print(self, *args, **kwargs) -> None:
        """``console.print``, with rich's markup off unless asked for (``markup=True``): a path or a flag in
        brackets is printed as it is."""
        if not self.quiet:
            kwargs.setdefault("markup", False)
            self.console.print(*args, **kwargs)

    @contextmanager
    def progress(self, total: int, completed: int = 0, label: str = ""):
        if self.quiet or not self.show_bars:
            start = time.perf_counter()
            bar = _Bar(self, None, None, total, label)
            yield bar
            if not self.quiet:
                self.print(f"{label} done: {bar.total} steps in {time.perf_counter() - start:.1f} s")
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[stats]}")]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(label, total=total, completed=completed, stats="")
            yield _Bar(self, progress, task, total, label)
