"""The benchmarks' on-disk cache: one JSON file per key, named by a sha256 of what it depends on.

Generated answers and judge replies are cached this way, so a rerun recomputes nothing and an
interrupted run resumes where it stopped. No torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..outputs import atomic_write_text


def sha256_of(obj: Any) -> str:
    """sha256 of `obj` as canonical JSON (sorted keys): a cache key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


class EntryCache:
    """One JSON file per key, written atomically: a crash never leaves half an entry."""

    def __init__(self, directory: Path, log: Callable[[str], object]):
        self.directory = Path(directory)
        self.log = log

    def get(self, key: str) -> dict | None:
        path = self.directory / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.log(f"cache entry {path} is unreadable; recomputing it")
            return None

    def put(self, key: str, entry: dict) -> None:
        atomic_write_text(self.directory / f"{key}.json",
                          json.dumps(entry, ensure_ascii=False) + "\n")
