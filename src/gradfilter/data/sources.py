"""Where records come from: a file (JSON array, JSON Lines, Parquet; gzip by a `.gz` suffix), a
directory written by a Hugging Face dataset's `save_to_disk`, or a hub dataset id (`owner/name`).
"""

from __future__ import annotations

import codecs
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..arguments import path_or_name
from ..errors import GradfilterError

Container = Literal["json", "jsonl", "parquet", "hf"]
# "hf": a directory written by `datasets.Dataset.save_to_disk` (also how a hub dataset is kept).
CONTAINERS: tuple[Container, ...] = ("json", "jsonl", "parquet", "hf")
ARROW_CONTAINERS: tuple[Container, ...] = ("parquet", "hf")
_FILE_SUFFIXES = (".json", ".jsonl", ".gz", ".parquet", ".arrow", ".csv")
# A hub dataset id: `owner/name`, each part letters, digits, '-', '_' or '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(eq=False)
class Source:
    """Where records come from: a file, a save_to_disk directory, or a hub dataset id."""

    name: str  # as the user gave it; names the data in every message
    container: Container
    path: Path | None  # None for a hub dataset id
    split: str | None = None  # the split of a Hugging Face DatasetDict (default "train")
    # Shards read as one dataset, in this order (a glob's matches or a directory's data files,
    # sorted by name); records are numbered across them. Read record by record (container
    # "jsonl": a subset of shards is written from records, in JSON Lines unless named).
    shards: tuple[Source, ...] = ()
    _loaded: Any = field(default=None, repr=False)  # the datasets.Dataset (hf.hf_dataset)

    def __str__(self) -> str:
        return self.name

    @property
    def label(self) -> Path:
        """The name as a Path, for APIs that carry one (a hub id reads as a relative path)."""
        return Path(self.name)


# What a subset's name says it is (`output_container`); `.gz` compresses the JSON ones.
_OUT_SUFFIXES: dict[str, Container] = {
    ".json": "json", ".json.gz": "json", ".jsonl": "jsonl", ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl", ".ndjson.gz": "jsonl", ".parquet": "parquet"}


def container_named(out: str | Path) -> Container | None:
    """The container an output's extension names (None: no known extension)."""
    name = Path(out).name.lower()
    return next((c for suffix, c in _OUT_SUFFIXES.items() if name.endswith(suffix)), None)


def output_container(out: str | Path, out_format: str | None,
                     input_container: Container | None, option: str = "--out") -> Container:
    """The container a subset is written in: `out_format` where given, else the one `out`'s
    extension names (`.json` a JSON array, `.jsonl` lines, `.parquet`), else the input's (a
    name without one of those extensions: a Hugging Face directory for an hf input). An
    extension that says otherwise than `out_format` is refused rather than written wrong."""
    if out_format is not None and out_format not in CONTAINERS:
        raise GradfilterError(f"--out-format must be one of {list(CONTAINERS)}, got "
                              f"{out_format!r}")
    named = container_named(out)
    if out_format is not None and named is not None and named != out_format:
        raise GradfilterError(
            f"{option} {out}: its extension names a {named} file, but --out-format is "
            f"{out_format}; name the file for its container (or drop --out-format: the "
            "extension decides)")
    chosen = out_format or named or input_container
    if chosen is None:
        raise GradfilterError(f"{option} {out}: give --out-format (json, jsonl, parquet or "
                              "hf), or an extension that names the container")
    return chosen


_GLOB = re.compile(r"[*?\[]")
HF_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk writes at the top
SHARD_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz",
                  ".parquet")


def shard_paths(name: str) -> list[Path] | None:
    """The shards DATA names, sorted: a glob's matching files, or a directory's data files
    (a directory save_to_disk wrote is a Hugging Face dataset, not shards); None where DATA
    is one file, a save_to_disk directory or a hub id. A glob that matches nothing is an
    error."""
    path = Path(name)
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_MARKERS):
            return None
        found = sorted(p for p in path.iterdir()
                       if p.is_file() and p.name.lower().endswith(SHARD_SUFFIXES))
        if not found:
            return None  # not shards: the Hugging Face reader says what is missing
        return found
    if path.exists() or not _GLOB.search(name):
        return None
    import glob

    found = sorted(Path(p) for p in glob.glob(name, recursive=True) if Path(p).is_file())
    if not found:
        raise GradfilterError(f"{name}: no file matches this pattern")
    return found


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` that is not a path to a data file (those get 'no such file')."""
    return bool(_HUB_ID.match(name)) and not name.lower().endswith(_FILE_SUFFIXES)


def resolve_source(data: str | Path | Source, split: str | None = None) -> Source:
    """What DATA names: an existing file or directory, shards (a glob, a directory of data
    files), else a hub id if it looks like one."""
    if isinstance(data, Source):
        return data
    path_or_name(data, "DATA")
    name = str(data)
    path = Path(data)
    shards = shard_paths(name)
    if shards is not None:
        if split is not None:
            raise GradfilterError(f"{name}: --split applies to a Hugging Face dataset, not to "
                                  "shards")
        return Source(name, "jsonl", None, None,
                      shards=tuple(Source(str(p), detect_container(p), p) for p in shards))
    if path.is_dir():
        source = Source(name, "hf", path, split)
    elif path.is_file() or not looks_like_hub_id(name):
        source = Source(name, detect_container(path), path, split)
    else:
        source = Source(name, "hf", None, split)
    if split is not None and source.container != "hf":
        raise GradfilterError(
            f"{name}: --split applies to a Hugging Face dataset, not to a {source.container} file"
        )
    return source


def detect_container(path: Path) -> Container:
    """Parquet by its extension, a directory is a Hugging Face dataset; JSON array or JSON
    Lines by the first non-blank byte (read as bytes, so a bad byte later is the reader's)."""
    path = Path(path)
    if path.is_dir():
        return "hf"
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    if path.name.endswith(".parquet"):
        return "parquet"
    with open_binary(path) as handle:
        head = handle.read(len(codecs.BOM_UTF8))
        if head != codecs.BOM_UTF8:
            head = head.lstrip()
            if head:
                return "json" if head.startswith(b"[") else "jsonl"
        while True:
            byte = handle.read(1)
            if byte == b"":
                raise GradfilterError(f"{path}: the file is empty")
            if not byte.isspace():
                return "json" if byte == b"[" else "jsonl"


def open_binary(path: Path):
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def open_text(path: Path):
    if not path.is_file():
        raise GradfilterError(f"{path}: no such file")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def bom_length(path: Path) -> int:
    """3 if the (decompressed) text starts with a UTF-8 byte order mark, else 0."""
    with open_binary(path) as handle:
        return len(codecs.BOM_UTF8) if handle.read(3) == codecs.BOM_UTF8 else 0


def parquet_error(path: Path | str, exc: Exception, problem: str) -> GradfilterError:
    """The one-line error for a file Parquet cannot read: the problem (what was expected), what
    was found there (a JSON dataset, a file cut off before its footer...), and Arrow's own
    words where the bytes say nothing plainer."""
    path = Path(path)
    found, plain = describe_file(path)
    detail = "" if plain else f" ({' '.join(str(exc).split())})"
    return GradfilterError(f"{path}: {problem}: found {found}{detail}")


def describe_file(path: Path) -> tuple[str, bool]:
    """What a file holds, in a few words, from its first and last bytes; and whether that says
    all (False: the reader's own message should follow)."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file", True
    with open(path, "rb") as handle:
        head = handle.read(64)
        handle.seek(max(size - 4, 0))
        tail = handle.read(4)
    text = head.removeprefix(codecs.BOM_UTF8).lstrip()
    if head[:4] == b"PAR1":
        if tail != b"PAR1":
            return "a Parquet file cut off before its footer (truncated?)", True
        return "a damaged Parquet file", False
    if head[:2] == b"\x1f\x8b":
        return "gzip data (a compressed JSON dataset?)", True
    if text[:1] == b"[":
        return "a JSON array (a dataset?)", True
    if text[:1] == b"{":
        return "JSON Lines text (a dataset?)", True
    return f"{size} bytes that are not Parquet", False
