"""No command writes over one of its own inputs (torch-free).

Every writing command names what it reads (`reads`) and what it will write (`writes`) and calls
`refuse_collisions` before it reads anything. Paths are compared after resolving links and
relative parts: `./d.json`, `d.json` and a symlink to it are one file. A directory counts with
everything inside it: an output inside an input directory (a proxy, a checkpoint, a Hugging Face
dataset) would change that input, an input inside an output directory would be replaced or
written into.

Every output is also probed there and then, before any data is read or model loaded: where it
goes must be a directory or can be made one, a file can be created and removed there, and there
is room left for at least a small file. An output that is a device, a FIFO or a socket, `-`
(standard output), or a file name ending in '/' is refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import GradfilterError

Kind = Literal["file", "dir", "any"]
MIN_FREE_BYTES = 1 << 20  # an output's file system must have at least this much room
_PROBE_BYTES = 4096


@dataclass(frozen=True, eq=False)
class Named:
    """A path a command touches, and how a message names it: `label` is its role and where it
    came from, e.g. "the subset (--out subset.json)"."""

    label: str
    path: Path
    kind: Kind = "any"  # for an output: what it is written as ("any": not checked)

    @property
    def real(self) -> Path:
        return Path(os.path.realpath(self.path))

    def same_as(self, other: Named) -> bool:
        """The same place: one resolved path, or one file under two names (a hard link)."""
        if self.real == other.real:
            return True
        return self.path.exists() and other.path.exists() and os.path.samefile(self.path,
                                                                                  other.path)


def named(role: str, option: str, path: str | Path, kind: Kind = "any") -> Named:
    return Named(f"{role} ({option} {path})", Path(path), kind)


def reads(role: str, option: str, path: str | Path | None) -> list[Named]:
    """An input, if it is a local file or directory (a hub id or a missing path is never
    written over: there is nothing there to lose)."""
    if path is None or not Path(path).exists():
        return []
    return [named(role, option, path)]


def writes(role: str, option: str, path: str | Path | None, kind: Kind = "file",
           run_record: bool = True) -> list[Named]:
    """An output, and the run record written beside it (`<path>.run.json`). `path` as the user
    spelled it (a string keeps a trailing '/')."""
    if path is None:
        return []
    spelled = _spelling(role, option, path, kind, run_record)
    path = Path(path)
    if run_record and path.name in ("", ".", ".."):  # it would be replaced whole
        raise GradfilterError(f"{role} ({option} {path}) names the current directory or one "
                              "above it; name a new file or directory")
    outputs = [Named(f"{role} ({option} {spelled})", path, kind)]
    if run_record:
        record = record_of(path)
        outputs.append(Named(f"the run record of {option} ({record})", record, "file"))
    return outputs


def record_of(path: str | Path) -> Path:
    """The run record written beside an output: `<path>.run.json`."""
    path = Path(path)
    return path.with_name(path.name + ".run.json")


def _spelling(role: str, option: str, path: object, kind: Kind, run_record: bool) -> str:
    """The output as the user wrote it; refused if it is not a path, is `-` (standard output)
    or, for a file, ends in '/'."""
    if not isinstance(path, str | os.PathLike):
        raise GradfilterError(f"{role} ({option}) must be a path (a string or a Path), got "
                              f"{type(path).__name__} {path!r}")
    spelled = os.fspath(path)
    if not isinstance(spelled, str):
        raise GradfilterError(f"{role} ({option}) must be a path as text, got bytes")
    if spelled == "-":
        why = "needs its run record beside it" if run_record else "is written atomically"
        raise GradfilterError(f"{role} ({option} -): writing to standard output is not "
                              f"supported (the output {why}); name a file (./- for a file "
                              "named '-')")
    if kind == "file" and spelled.endswith(("/", os.sep)):
        raise GradfilterError(f"{role} ({option} {spelled}) ends in '/', which names a "
                              "directory; it is written as a file (name a file)")
    return spelled


def refuse_collisions(inputs: Iterable[Named], outputs: Iterable[Named]) -> None:
    """A one-line GradfilterError if an output lands on, inside or around an input, if two
    outputs land on one place, if an output's path holds the wrong kind of thing (a file
    where a directory is written, or the reverse; a device, a FIFO or a socket anywhere), or
    if an output cannot be written where it goes (see `probe`). An entry in both lists (a
    checkpoint directory is read and written) is not compared with itself."""
    inputs, outputs = list(inputs), list(outputs)
    for out in outputs:
        _check_name(out)
    for out in outputs:
        _check_kind(out)
    for out in outputs:
        for given in inputs:
            _check_pair(out, given, "refusing to write over an input")
    for k, out in enumerate(outputs):
        for other in outputs[k + 1:]:
            _check_pair(other, out, "refusing to write two outputs to one place")
    for out in outputs:
        probe(out)


def _check_kind(out: Named) -> None:
    """Links are followed: a link to a regular file is written through (its target is
    replaced, the link kept), a link to anything else is judged by what it points at."""
    from .outputs import file_kind

    kind = file_kind(out.path)  # None: a regular file, or nothing yet
    if kind is None:
        if out.kind == "dir" and out.path.exists():
            raise GradfilterError(f"{out.label} is an existing file; it is written as a "
                                  "directory (name a directory)")
        return
    if kind == "a directory":
        if out.kind == "file":
            raise GradfilterError(f"{out.label} is an existing directory; it is written as a "
                                  "file (name a file)")
        return
    raise GradfilterError(f"{out.label} is {kind}, not a regular file or directory; refusing "
                          "to replace it (name a new path)")


def probe(out: Named) -> None:
    """A one-line error now, not after hours of scoring, if `out` cannot be written: the
    nearest existing directory on its way (and a directory output itself, if it exists) must
    take a new file, created and removed here; its name must fit the file system; there must
    be MIN_FREE_BYTES of room."""
    places = [out.real.parent]
    if out.kind != "file" and out.real.is_dir():
        places.append(out.real)
    for place in places:
        place = _nearest_directory(place)
        if not place.is_dir():
            raise GradfilterError(f"cannot write {out.label}: {place} is a file, not a "
                                  "directory")
        _probe_directory(out, place)


def _nearest_directory(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists."""
    while not _exists(path) and path != path.parent:
        path = path.parent
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up, say: not there
        return False


def _check_name(out: Named) -> None:
    """Every name on the output's path fits the file system's limit (255 bytes on most)."""
    place = _nearest_directory(Path(os.path.abspath(out.path)).parent)
    try:
        limit = os.pathconf(place, "PC_NAME_MAX") if place.is_dir() else 255
    except (OSError, ValueError):
        limit = 255
    for part in Path(os.path.abspath(out.path)).parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > limit:
            shown = part if len(part) <= 40 else f"{part[:20]}...{part[-16:]}"
            raise GradfilterError(f"cannot write {out.label}: the name {shown} is {size} bytes, "
                                  f"over the {limit} its file system allows")


def _probe_directory(out: Named, place: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".gradfilter-probe.", suffix=".tmp", dir=place)
        try:
            os.write(fd, bytes(_PROBE_BYTES))
        finally:
            os.close(fd)
            os.unlink(name)
        room = os.statvfs(place)
    except OSError as exc:
        raise GradfilterError(f"cannot write {out.label}: {place}: "
                              f"{exc.strerror or exc}") from None
    free = room.f_bavail * room.f_frsize
    if free < MIN_FREE_BYTES:
        raise GradfilterError(f"cannot write {out.label}: no room left on the file system of "
                              f"{place} ({free} bytes free)")


def _check_pair(out: Named, other: Named, refusal: str) -> None:
    if out is other:
        return
    a, b = out.real, other.real
    if out.same_as(other):
        raise GradfilterError(f"{refusal}: {out.label} is {other.label}: both are {a}")
    if b in a.parents:
        raise GradfilterError(f"{refusal}: {out.label} lies inside {other.label}")
    if a in b.parents:
        raise GradfilterError(f"{refusal}: {other.label} lies inside {out.label}")


# --- what each stage reads and writes ---------------------------------------------------------

def data_path(data: object) -> Path | None:
    """The local path of DATA (a path, or a read Dataset's source), None for a hub id."""
    source = getattr(data, "source", None)
    if source is not None:
        return source.path
    if isinstance(data, str | Path):
        return Path(data)
    return None


def data_reads(data: object) -> list[Named]:
    """DATA as inputs: its file or directory, or each shard a glob names."""
    from .data.sources import shard_paths

    source = getattr(data, "source", None)
    shards = (source.shards if source is not None else ()) or ()
    if not shards and isinstance(data, str | Path) and not Path(data).exists():
        shards = shard_paths(str(data)) or ()
    if shards:
        return [named("a shard of the data", "DATA", getattr(s, "path", s)) for s in shards]
    return reads("the data", "DATA", data_path(data))


def subset_kind(data: object, out_format: str | None, out: str | Path | None = None) -> Kind:
    """A subset is a directory when it is a Hugging Face dataset: asked for (--out-format hf),
    or (where neither --out-format nor the output's extension names a container) because the
    input is one (a directory or a hub id). A contradiction between the two is refused here."""
    from .data.sources import output_container, shard_paths

    container = getattr(data, "container", None)  # a read Dataset's, or a Source's
    if container is None and isinstance(data, str | Path) and shard_paths(str(data)):
        container = "jsonl"  # shards are read record by record
    if container is None:
        path = data_path(data)
        container = "hf" if path is None or path.is_dir() or not path.exists() else "json"
    if out is None:
        return "dir" if (out_format or container) == "hf" else "file"
    return "dir" if output_container(out, out_format, container) == "hf" else "file"


def select_paths(data: object, stats: object, out: str | Path, out_format: str | None = None,
                 out_option: str = "--out", *, rejected: str | Path | None = None,
                 annotate: str | Path | None = None) -> tuple[list[Named], list[Named]]:
    """`select`: reads DATA and the statistics table, writes the subset and its run record (and
    the rejected and the annotated records where asked)."""
    stats_path = stats if isinstance(stats, str | Path) else None
    traces = [*writes("the rejected records", "--rejected", rejected,
                      subset_kind(data, None, rejected) if rejected else "file", False),
              *writes("the annotated records", "--annotate", annotate,
                      subset_kind(data, None, annotate) if annotate else "file", False)]
    return ([*data_reads(data),
             *reads("the statistics table", "--stats", stats_path),
             *reads("the statistics table's run record", "--stats",
                    None if stats_path is None else record_of(stats_path))],
            [*writes("the subset", out_option, out, subset_kind(data, out_format, out)),
             *traces])


def score_paths(data: object, out: str | Path, proxy: str | None, *,
                checkpoint_dir: str | Path | None = None, save_adapters: str | Path | None = None,
                out_option: str = "--out", target_examples: object = None,
                ) -> tuple[list[Named], list[Named]]:
    """`score`: reads DATA, the proxy, the target examples and a checkpoint; writes the table,
    its run record, the checkpoint and the adapters."""
    inputs = [*data_reads(data), *reads("the proxy", "--proxy", proxy),
              *reads("the target examples", "--target-examples", data_path(target_examples))]
    outputs = [*writes("the statistics table", out_option, out),
               *writes("the adapters directory", "--save-adapters", save_adapters, "dir",
                       run_record=False)]
    if checkpoint_dir is not None:
        checkpoint = named("the checkpoint directory", "--checkpoint-dir", checkpoint_dir, "dir")
        outputs.append(checkpoint)
        if checkpoint.path.exists():
            inputs.append(checkpoint)
    return inputs, outputs


def default_stats(out: str | Path) -> Path:
    """Where `run` writes the statistics table unless told: `<out>.stats.parquet`."""
    return Path(out).with_name(Path(out).name + ".stats.parquet")


def run_paths(data: object, out: str | Path, stats: str | Path | None, proxy: str | None, *,
              checkpoint_dir: str | Path | None = None, save_adapters: str | Path | None = None,
              out_format: str | None = None, out_option: str = "--out",
              stats_option: str = "--stats", rejected: str | Path | None = None,
              annotate: str | Path | None = None, target_examples: object = None,
              ) -> tuple[list[Named], list[Named]]:
    """`run`: what `score` reads and writes, and the subset (the table is an output here)."""
    inputs, outputs = score_paths(
        data, stats or default_stats(out), proxy, checkpoint_dir=checkpoint_dir,
        save_adapters=save_adapters, out_option=stats_option if stats else "default --stats",
        target_examples=target_examples)
    return inputs, [*outputs, *select_paths(data, None, out, out_format, out_option,
                                            rejected=rejected, annotate=annotate)[1]]
