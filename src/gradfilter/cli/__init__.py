"""The `gradfilter` command line: score, select, run (both), inspect, demo and bench.

No module of this package imports torch when it loads: `--help`, `select` and `inspect` run
without it; the commands that need a model import it when they run.
"""

from __future__ import annotations

import sys

import click

from ..errors import GradfilterError
from .bench import bench
from .data import inspect, select
from .model import demo, run, score
from .report import console


@click.group()
@click.version_option(package_name="gradfilter")
def app() -> None:
    """Select the high-value part of an instruction-tuning dataset by gradient signal-to-noise.

    DATA: a .json/.jsonl(.gz)/.parquet file, a directory written by a Hugging Face dataset's
    save_to_disk, or a hub dataset id (owner/name).
    """


for command in (score, select, run, inspect, demo, bench):
    app.add_command(command)


def main() -> None:
    try:
        app(standalone_mode=False)
    except GradfilterError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
