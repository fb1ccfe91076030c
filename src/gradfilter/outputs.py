"""Atomic file writes, the run record written beside every output, and the console summary."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD_PACKAGES = ("gradfilter", "torch", "transformers", "peft", "pyarrow", "numpy", "gguf",
                   "datasets")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    from .errors import GradfilterError

    path = Path(path)
    if path.is_dir():
        raise GradfilterError(f"{path}: exists and is a directory; a file is written here "
                              "(name a file)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a new file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: Path):
    """Yield a fresh temporary directory beside `path`; it takes the place of `path` (a
    directory written earlier is removed) only if the block succeeds."""
    from .errors import GradfilterError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GradfilterError(f"{path}: exists and is not a directory; a Hugging Face dataset "
                              "is written as a directory (name another --out)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORD_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": device,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_record_path(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".run.json")


def write_run_record(output: Path, record: dict[str, Any]) -> Path:
    """Write `<output>.run.json`: config, seeds, versions, device, per-phase wall time."""
    full = {"command_line": sys.argv, "versions": package_versions(), **record}
    path = run_record_path(output)
    atomic_write_text(path, json.dumps(full, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
