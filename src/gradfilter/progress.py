"""Progress of the long phases (torch-free: scoring and the benchmarks share them).

On a terminal, rich's live bars. Anywhere else (a log file, CI, `nohup`) bars draw nothing until
the end, so plain lines go to stderr instead: every `GRADFILTER_PROGRESS_SECONDS` (default 30)
and when a phase ends, e.g. `train epoch 1/2 x4 members: 160/640 examples, 3.2 ex/s, 2 min 30 s
left`. Both keep the same API (a rich `Progress`), so callers never know which they have. A
step with no count (loading the proxy) is a `phase`: one line with its time when it ends.

Other libraries' progress bars (tqdm: the hub's downloads, transformers' `Loading weights`, the
GGUF de-quantisation, datasets' saving) show only where gradfilter's own bars do, on a terminal
with progress on (`library_bars`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

INTERVAL_ENV = "GRADFILTER_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def progress_bars(enabled: bool) -> Progress:
    """Live bars on a terminal, plain lines on stderr elsewhere, nothing when not `enabled`."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(interval())
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


def shows_library_bars(progress: bool) -> bool:
    """Whether other libraries' bars may draw: progress on and stderr a terminal."""
    return progress and sys.stderr.isatty()


@contextmanager
def library_bars(show: bool) -> Iterator[None]:
    """Within the block, unless `show`, every tqdm bar (the class other libraries' bars are
    made from, subclasses included) is created disabled; as before after it."""
    try:
        from tqdm import std
    except ImportError:  # no library that draws tqdm bars is installed
        show = True
    if show:
        yield
        return
    original = std.tqdm.__dict__["__init__"]  # a descriptor (tqdm wraps it): restored as is

    def disabled(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original.__get__(self, type(self))(*args, **kwargs)

    std.tqdm.__init__ = disabled
    try:
        yield
    finally:
        std.tqdm.__init__ = original


@contextmanager
def phase(bars: Progress, description: str) -> Iterator[None]:
    """A step with no count (loading a model): a line with its time when it ends."""
    task = bars.add_task(description, total=1, rate="", unit="")
    yield
    bars.advance(task, 1)


def advance_bar(bars: Progress, task: TaskID, rows: int, start: float, already: int = 0) -> None:
    """Advance `task` by `rows` examples (or the task's `unit`) and show the rate since `start`
    (of the rows done in this run: `already` were done before it resumed)."""
    bars.advance(task, rows)
    done = bars.tasks[task].completed - already
    rate = done / max(time.perf_counter() - start, 1e-9)
    bars.update(task, rate=f"{rate:.1f} {_short(unit_of(bars.tasks[task]))}/s")


def unit_of(task) -> str:
    """What a task counts: `examples` unless it was added with a `unit` field."""
    return task.fields.get("unit", "examples")


def _short(unit: str) -> str:
    return "ex" if unit == "examples" else unit


def interval() -> float:
    """Seconds between two plain progress lines (GRADFILTER_PROGRESS_SECONDS, default 30)."""
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(float(text), 0.0) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def duration(seconds: float) -> str:
    """`2 min 30 s`, `1 h 5 min`, `12 s`, `0.4 s`."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class PlainProgress(Progress):
    """Rich's task bookkeeping with nothing drawn; a plain line on stderr per task every
    `every` seconds and once when the task is done."""

    def __init__(self, every: float) -> None:
        super().__init__(disable=True)
        self.every = every
        self._started: dict[TaskID, tuple[float, float]] = {}  # (time, completed at start)
        self._printed: dict[TaskID, float] = {}
        self._finished: set[TaskID] = set()

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0,
                 completed: int = 0, visible: bool = True, **fields: Any) -> TaskID:
        task = super().add_task(description, start, total, completed, visible, **fields)
        now = time.perf_counter()
        self._started[task] = (now, float(completed))
        self._printed[task] = now
        return task

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        task = self.tasks[task_id]
        now = time.perf_counter()
        if task.total is not None and task.completed >= task.total:
            self._report(task_id, done=True)
        elif now - self._printed[task_id] >= self.every:
            self._report(task_id, done=False)

    def _report(self, task_id: TaskID, done: bool) -> None:
        if task_id in self._finished:
            return
        task = self.tasks[task_id]
        started, already = self._started[task_id]
        elapsed = time.perf_counter() - started
        speed = (task.completed - already) / max(elapsed, 1e-9)
        total = int(task.total) if task.total is not None else "?"
        shown = f"{speed:.1f}" if speed >= 1 else f"{speed:.2g}"
        unit = unit_of(task)
        line = (f"{task.description}: {int(task.completed)}/{total} {unit}, "
                f"{shown} {_short(unit)}/s, " if unit else f"{task.description}: ")
        if done:
            self._finished.add(task_id)
            line += f"done in {duration(elapsed)}"
        elif task.total is not None and speed > 0:
            line += f"{duration((task.total - task.completed) / speed)} left"
        else:
            line += "time left unknown"
        self._printed[task_id] = time.perf_counter()
        print(line, file=sys.stderr, flush=True)
