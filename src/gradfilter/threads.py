"""How many CPU threads torch uses: `--threads`, by default OMP_NUM_THREADS where set, else the
cores this process may use.

Torch's own default is every core of the machine; where another process holds one of them, a
step waits on the thread that is not running (docs/performance.md, "Threads"). The count is an
execution setting, not a scoring one: it is not part of ScoreConfig, whose fields name the
stored tables, and changes no number beyond float rounding.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS and Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """OMP_NUM_THREADS where it is set to a count (torchrun sets 1 for each worker, a user may
    set it for the machine), else `available_cores()`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cores()


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to `threads` (None: `default_threads()`); the count set."""
    import torch

    count = default_threads() if threads is None else threads
    torch.set_num_threads(count)
    return count
