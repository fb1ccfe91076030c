"""Progress bars for the long phases (torch-free: scoring and the benchmarks share them)."""

from __future__ import annotations

import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bars(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def advance_bar(bars: Progress, task: TaskID, rows: int, start: float, already: int = 0) -> None:
    """Advance `task` by `rows` examples and show the rate since `start` (of the rows done in
    this run: `already` were done before it resumed)."""
    bars.advance(task, rows)
    done = bars.tasks[task].completed - already
    bars.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.1f} ex/s")
