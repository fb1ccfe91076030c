"""Hugging Face datasets as a source: a `save_to_disk` directory or a hub dataset id.

Both become a memory-mapped `datasets.Dataset` whose rows are read in Arrow batches (see
`readers.arrow_batches`); a subset of one is written back as a `save_to_disk` directory of
`Dataset.select(indices)`, which keeps the features and column order (see `writing`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import GradfilterError
from .sources import HF_MARKERS, Source

DEFAULT_SPLIT = "train"
_MARKERS = HF_MARKERS  # what save_to_disk writes at the top
_QUIET_LOGGERS = ("datasets", "huggingface_hub", "fsspec")


def hf_dataset(source: Source):
    """The `datasets.Dataset` of an "hf" source (memory-mapped; loaded on first use and kept on
    the source, so a reader's passes and the writer share one)."""
    if source._loaded is None:
        source._loaded = load_hf(source)
    return source._loaded


def load_hf(source: Source):
    """The `datasets.Dataset` that `source` names (one split of a DatasetDict)."""
    with quiet_hf():
        if source.path is None:
            return _load_hub(source)
        return _load_from_disk(source, source.path)


def _load_from_disk(source: Source, path: Path):
    import datasets

    if not any((path / marker).is_file() for marker in _MARKERS):
        raise GradfilterError(
            f"{source}: a directory, but not a Hugging Face dataset written by save_to_disk "
            f"(it has no {' or '.join(_MARKERS)})"
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        # Whatever a damaged directory makes datasets raise (an empty one: IndexError) is a
        # problem with the user's input: one line, not a traceback.
        raise GradfilterError(
            f"{source}: cannot load this Hugging Face dataset directory "
            f"({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return _pick_split(source, loaded)


def _pick_split(source: Source, loaded):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        split = source.split or DEFAULT_SPLIT
        if split not in loaded:
            raise GradfilterError(
                f"{source}: no split '{split}' in this DatasetDict; its splits are "
                f"{list(loaded)} (choose one with --split)"
            )
        return loaded[split]
    if source.split is not None:
        raise GradfilterError(f"{source}: a single dataset without splits; --split does not apply")
    return loaded


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed connection to the hub raises, whichever HTTP client the hub library uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass  # an older huggingface_hub talks through requests
    try:
        import requests

        errors.extend([requests.ConnectionError, requests.Timeout])
    except ImportError:
        pass  # a newer one through httpx only
    return tuple(errors)


def _load_hub(source: Source):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    name, split = source.name, source.split or DEFAULT_SPLIT
    try:
        return datasets.load_dataset(name, split=split)
    except DatasetNotFoundError:
        raise GradfilterError(
            f"{name}: not a local file, and the Hugging Face hub has no dataset '{name}' "
            "(or it is private or gated and this machine is not logged in)"
        ) from None
    except _network_errors() as exc:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else _one_line(exc)
        raise GradfilterError(
            f"{name}: not a local file, and the Hugging Face hub is not reachable to load "
            f"dataset '{name}' ({why})"
        ) from None
    except ValueError as exc:  # an unknown split, among others
        raise GradfilterError(f"{name}: {_one_line(exc)}") from None


def hub_offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


@contextmanager
def quiet_hf() -> Iterator[None]:
    """No progress bars and no retry chatter from `datasets` and the hub client while we use
    them: gradfilter reports problems itself, on one line."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    bars_were_on = not are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars_were_on:
            enable_progress_bars()


def save_dataset(dataset: Any, path: Path) -> None:
    """`dataset.save_to_disk` into a fresh directory that replaces `path` only when complete."""
    from ..outputs import atomic_dir

    with quiet_hf(), atomic_dir(path) as tmp:
        dataset.save_to_disk(str(tmp))


def dataset_from_table(table: Any):
    """A `datasets.Dataset` over an in-memory Arrow table (features inferred from its schema)."""
    import datasets

    return datasets.Dataset(table)
