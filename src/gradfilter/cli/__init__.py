"""The `gradfilter` command line: score, select, run (both), report, inspect, demo and
bench.

No module of this package imports torch when it loads: `--help`, `select` and `inspect` run
without it; the commands that need a model import it when they run.
"""

from __future__ import annotations

import io
import os
import sys
import traceback

import click

from ..errors import GradfilterError
from ..interrupts import Interrupted, handled
from ..progress import library_bars
from .bench import bench
from .data import inspect, select
from .data import report as report_command  # (.report is the module of printed summaries)
from .model import demo, run, score
from .report import console

DEBUG_ENV = "GRADFILTER_DEBUG"
_state = {"debug": False}  # --debug of this invocation (read by main after the command)


@click.group()
@click.version_option(package_name="gradfilter")
@click.option("--debug", is_flag=True,
              help=f"On an error, show the traceback and its cause (also {DEBUG_ENV}=1).")
def app(debug: bool) -> None:
    """Select the high-value part of an instruction-tuning dataset by gradient signal-to-noise.

    DATA: a .json/.jsonl(.gz)/.parquet file, a directory written by a Hugging Face dataset's
    save_to_disk, or a hub dataset id (owner/name).
    """
    _state["debug"] = debug


for command in (score, select, run, report_command, inspect, demo, bench):
    app.add_command(command)


def main() -> None:
    """Run the command; an error is one line on stderr and exit 2 (with --debug, the traceback
    and the cause behind the one line come first). Ctrl-C, SIGTERM and SIGHUP print `aborted`
    and exit 128 + the signal's number, leaving no partial output. Where stderr is not a
    terminal, other libraries' progress bars are off (gradfilter's own phases print plain
    lines there)."""
    _state["debug"] = False
    _printing_never_fails()
    try:
        with handled(), library_bars(sys.stderr.isatty()):  # in a log, others' bars are noise
            app(standalone_mode=False)
    except GradfilterError as exc:
        _show_traceback(exc)
        _error(str(exc))
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except Interrupted as exc:
        console.print(f"aborted ({exc})", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # a library raised what we did not foresee: still one line
        _show_traceback(exc)
        hint = "" if _debugging() else " (run with --debug for the traceback)"
        _error(f"{type(exc).__name__}: {_one_line(exc)}{hint}")


def _printing_never_fails() -> None:
    """A console that cannot show a character (PYTHONIOENCODING=ascii, a Windows code page)
    shows a replacement instead of failing a run whose outputs are written."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors="replace")


def _debugging() -> bool:
    return _state["debug"] or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _show_traceback(exc: BaseException) -> None:
    """With --debug, the traceback, the cause included even where `from None` hid it."""
    if _debugging():
        exc.__suppress_context__ = False
        traceback.print_exception(exc, file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "") if text else "(no message)"


def _error(message: str) -> None:
    console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)
