"""SIGTERM and SIGHUP stop a command as Ctrl-C does (torch-free).

`kill`, `docker stop`, Slurm's preemption and a closed terminal send SIGTERM or SIGHUP. The
command line turns them into `Interrupted`, which unwinds like KeyboardInterrupt: every output
being written removes its temporary file, nothing is replaced, and the command prints `aborted`
and exits 128 + the signal's number. A checkpointed scoring run holds the signal until its
next commit (`until_boundary`, `boundary`), so the work up to there is kept; a second signal
stops it at once.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOPPING = (signal.SIGTERM, signal.SIGHUP)
_state: dict[str, Any] = {"hold": 0, "pending": None}


class Interrupted(BaseException):
    """A stopping signal arrived (a BaseException, as KeyboardInterrupt: no `except Exception`
    swallows it)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum, self.detail = signum, detail
        super().__init__(f"{signal.Signals(signum).name}{detail}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Interrupted inside this block (the previous handlers come back
    after it); outside the main thread, where Python cannot set handlers, nothing changes."""
    try:
        previous = {signum: signal.signal(signum, _on_signal) for signum in STOPPING}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state["pending"] = None


def _on_signal(signum: int, frame: object) -> None:
    if _state["hold"] and _state["pending"] is None:
        _state["pending"] = signum  # stop at the next boundary
        return
    raise Interrupted(signum)


@contextmanager
def until_boundary() -> Iterator[None]:
    """Hold a stopping signal inside this block until `boundary()` is called (or the block
    ends); a second signal is not held."""
    _state["hold"] += 1
    try:
        yield
    except BaseException:
        _state["pending"] = None
        raise
    finally:
        _state["hold"] -= 1
    boundary(": stopped at the end of the checkpointed stage")


def boundary(detail: str = "") -> None:
    """Raise Interrupted now if a stopping signal is being held."""
    signum = _state["pending"]
    if signum is not None:
        _state["pending"] = None
        raise Interrupted(signum, detail)
