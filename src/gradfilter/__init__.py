"""gradfilter: select the high-value part of an instruction-tuning dataset by G-SNR."""

from .errors import GradfilterError
from .gradstats import ScoreConfig
from .noise_benchmark import register_corruption, run_noise_benchmark
from .pipeline import METHODS, load_stats, read_dataset, score, select
from .selection import Selection, select_top
from .utilities import UTILITIES, compute_utilities, utility_scores, with_utilities

__all__ = [
    "METHODS",
    "UTILITIES",
    "GradfilterError",
    "ScoreConfig",
    "Selection",
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
__version__ = "0.1.0"
