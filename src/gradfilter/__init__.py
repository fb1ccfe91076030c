"""gradfilter: select the high-value part of an instruction-tuning dataset by G-SNR.

The names below load on first use, so that reading, inspecting and selecting (which need no
model) never import torch: `gradfilter select` and `gradfilter inspect` start fast and small.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import GradfilterError

# Same seed, same scores, on a busy machine too: MKL may otherwise run a matrix product on
# fewer threads when the CPU is loaded, which changes the order of its float sums.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

_EXPORTS = {
    "METHODS": "config",
    "ScoreConfig": "config",
    "Selection": "selection",
    "Subset": "subset",
    "UTILITIES": "utilities",
    "compute_utilities": "utilities",
    "load_stats": "table",
    "read_dataset": "data.dataset",
    "register_corruption": "bench.noise",
    "run_noise_benchmark": "bench.noise",
    "score": "scoring.score",
    "select": "subset",
    "select_top": "selection",
    "utility_scores": "table",
    "with_utilities": "table",
}

__all__ = [
    "METHODS",
    "UTILITIES",
    "GradfilterError",
    "ScoreConfig",
    "Selection",
    "Subset",
    "compute_utilities",
    "load_stats",
    "read_dataset",
    "register_corruption",
    "run_noise_benchmark",
    "score",
    "select",
    "select_top",
    "utility_scores",
    "with_utilities",
]

if TYPE_CHECKING:
    from .bench.corruptions import register_corruption
    from .bench.noise import run_noise_benchmark
    from .config import METHODS, ScoreConfig
    from .data.dataset import read_dataset
    from .scoring.score import score
    from .selection import Selection, select_top
    from .subset import Subset, select
    from .table import load_stats, utility_scores, with_utilities
    from .utilities import UTILITIES, compute_utilities


def __getattr__(name: str) -> Any:
    """An exported name from its module, or a submodule (`gradfilter.formats`), on first use."""
    if name == "__version__":  # the one version: the installed distribution's (pyproject.toml)
        from .outputs import package_versions

        return package_versions()["gradfilter"]
    if name.startswith("__"):  # e.g. __path__ lookups by import machinery: never a submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        try:
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
