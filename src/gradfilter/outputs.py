"""Atomic file writes, the run record written beside every output, and the console summary.

An output replaces only a regular file: a device, a FIFO, a socket or a directory in its place
is refused, never replaced. A symbolic link is followed: its final target is written (through a
temporary file beside the target) and the link is kept. Outputs written inside `together()`
are moved into place together at its end, the last written first (a run record before the
subset it describes), or not at all.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import metadata
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from .errors import GradfilterError

P = ParamSpec("P")
R = TypeVar("R")
RECORD_PACKAGES = ("gradfilter", "torch", "transformers", "peft", "pyarrow", "numpy", "gguf",
                   "datasets")
# Of an output's name, at most this many bytes go into its temporary name: a long name that is
# legal stays legal with the temporary name's dot, random part and suffix around it.
TEMP_NAME_BYTES = 64
# Errors of writing rather than of reading: raised inside a write block, they are the output's.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))
# (move it into place, remove it) of each output written inside together(), in writing order
_staged: ContextVar[list[tuple[Callable[[], None], Callable[[], None]]] | None] = ContextVar(
    "gradfilter_staged_outputs", default=None)


def file_kind(path: Path) -> str | None:
    """What is at `path` (links followed) if it is not a regular file: "a character device",
    "a FIFO (named pipe)", "a directory"...; None for a regular file or nothing."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def write_target(path: Path) -> Path:
    """Where writing `path` lands: `path`, or the final target of a symbolic link."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def temp_prefix(name: str) -> str:
    """`.<name>.` with the name cut to TEMP_NAME_BYTES bytes (on a character boundary)."""
    head = name.encode("utf-8", "surrogateescape")[:TEMP_NAME_BYTES]
    return f".{head.decode('utf-8', 'ignore')}."


def output_error(path: object, exc: OSError) -> GradfilterError:
    """The one-line error for an output that could not be written, naming the output as the
    user named it (never the temporary file it was being written to)."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return GradfilterError(f"cannot write {path}: {reason}")


def is_write_error(exc: OSError, tmp: object) -> bool:
    """Whether an OSError raised while an output was being written is about that output: its
    temporary file is named, or the error is one only writing gives (a full disk...)."""
    if exc.filename is not None:
        return str(exc.filename) == str(tmp)
    return exc.errno in _WRITE_ERRNOS or "No space left on device" in str(exc)


@contextmanager
def together() -> Iterator[None]:
    """Outputs written by atomic_path and atomic_dir inside this block are moved into place at
    its end, the last one written first, and only if the whole block succeeds: a subset is
    never left without the run record written after it."""
    staged: list[tuple[Callable[[], None], Callable[[], None]]] = []
    token = _staged.set(staged)
    try:
        yield
    except BaseException:
        for _, remove in reversed(staged):  # the last first: it may sit in a directory made
            remove()                        # for an earlier one
        raise
    finally:
        _staged.reset(token)
    for k in range(len(staged) - 1, -1, -1):
        try:
            staged[k][0]()
        except BaseException:
            for _, remove in reversed(staged[:k + 1]):
                remove()
            raise


def written_together(function: Callable[P, R]) -> Callable[P, R]:
    """`function` with every output it writes moved into place together (see together())."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with together():
            return function(*args, **kwargs)

    return wrapper


def _commit(move: Callable[[], None], remove: Callable[[], None]) -> bool:
    """Move an output into place now, or stage it for the end of together(); True if staged."""
    staged = _staged.get()
    if staged is None:
        move()
        return False
    staged.append((move, remove))
    return True


def _remove_file(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.
    A symbolic link at `path` is followed (its target is written); anything but a regular
    file there is refused."""
    path = Path(path)
    target = write_target(path)
    kind = file_kind(target)
    if kind == "a directory":
        raise GradfilterError(f"{path}: exists and is a directory; a file is written here "
                              "(name a file)")
    if kind is not None:
        raise GradfilterError(f"{path}: exists and is {kind}, not a regular file; refusing to "
                              "replace it (name a regular file or a new path)")
    made = make_parents(path, target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp",
                                   dir=target.parent)
        os.close(fd)
    except OSError as exc:
        remove_made(made)
        raise output_error(path, exc) from exc

    def remove() -> None:
        _remove_file(tmp)
        remove_made(made)

    def place() -> None:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private: a new file's mode
        os.replace(tmp, target)

    yield from _stage(path, Path(tmp), place, remove, lambda: _remove_file(tmp))


@contextmanager
def atomic_dir(path: Path):
    """Yield a fresh temporary directory beside `path`; it takes the place of `path` (a
    directory written earlier is removed) only if the block succeeds. A symbolic link at
    `path` is followed."""
    path = Path(path)
    target = write_target(path)
    kind = file_kind(target)
    if target.exists() and kind != "a directory":
        raise GradfilterError(f"{path}: exists and is not a directory; a Hugging Face dataset "
                              "is written as a directory (name another --out)")
    made = make_parents(path, target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp",
                                    dir=target.parent))
    except OSError as exc:
        remove_made(made)
        raise output_error(path, exc) from exc

    def remove() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_made(made)

    def place() -> None:
        os.chmod(tmp, 0o777 & ~_umask())
        _replace_dir(tmp, target)

    def discard() -> None:
        if tmp.exists():
            shutil.rmtree(tmp)

    yield from _stage(path, tmp, place, remove, discard)


def _stage(path: Path, tmp: Path, place: Callable[[], None], remove: Callable[[], None],
           discard: Callable[[], None]):
    """The body of atomic_path and atomic_dir: yield `tmp` for the block to write (an OSError
    about it names `path`), then `place` it at `path` now or at the end of together(); on any
    failure `remove` it (and the directories made for it); `discard` it unless staged."""
    staged = False
    try:
        try:
            yield tmp
        except OSError as exc:
            if is_write_error(exc, tmp):
                raise output_error(path, exc) from exc
            raise

        def move() -> None:
            try:
                place()
            except OSError as exc:
                raise output_error(path, exc) from exc

        staged = _commit(move, remove)
    except BaseException:
        remove()
        raise
    finally:
        if not staged:
            discard()


def make_parents(path: Path, target: Path) -> list[Path]:
    """Make the missing directories above `target`; the ones made, deepest first."""
    missing = []
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_made(missing)
        raise output_error(path, exc) from exc
    return missing


def remove_made(made: list[Path]) -> None:
    """Remove the directories an output made on its way, if they are still empty."""
    for directory in made:
        try:
            directory.rmdir()
        except OSError:
            return


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.is_dir():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".old",
                                dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(tmp, target)
    shutil.rmtree(old)


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
