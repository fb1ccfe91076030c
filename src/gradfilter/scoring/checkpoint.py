"""Resumable scoring: a checkpoint directory that a SIGKILL at any moment leaves usable.

Layout of `--checkpoint-dir DIR`:

    fingerprint.json          every setting that affects results, and the data's hash
    runs.json                 each run that worked on it: where it began and the settings
                              outside the fingerprint (the micro-batch budget, processes)
    lock                      flock-ed by the run using the directory (rank 0)
    state.json                the commit point: last committed step, collected epochs, finished
    train-<step>/member<m>.pt member m's own training state (the ensemble's payload: its LoRA A/B
                              and AdamW moments; and its per-step training losses)
    train-<step>/member<m>.rank<r>.pt
                              with --collect during, when ranks share member m's batches: what
                              rank r (not m's owner) recorded of it
    train-<step>/common.pt    what all members share (AdamW step count and param groups, LR
                              schedule, RNG states)
    collect-e<e>/*.npz        collection shards: rows of whole collection batches, some members

Every file is written to a temporary name in its own directory, fsynced and renamed over its
final name (then the directory is fsynced), so a file is either absent, the old one or the new
one. A training checkpoint is committed only when state.json names it, after all its files are
written (and, under torchrun, after every rank wrote its members); a shard is committed when
its rename lands. The snapshots taken at the end of the collected epochs are kept (a later
export of the adapters, or a collection pass interrupted after training went on, needs them);
other superseded training checkpoints are deleted. SIGTERM and SIGHUP are held until the next
commit (see `interrupts`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import GradfilterError
from ..interrupts import boundary, until_boundary
from ..outputs import is_write_error, output_error, temp_prefix
from .distributed import Comm, Layout

FORMAT = 1
SLEEP_HOOK = "GRADFILTER_TEST_SLEEP_AFTER_CHECKPOINT"  # test hook: pause after each commit


def durable_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` atomically and durably: temporary file beside it, fsync, rename, fsync dir.
    A full disk is a one-line error naming `path`."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and is_write_error(exc, tmp):
            raise output_error(path, exc) from exc
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    durable_write(path, lambda h: h.write((json.dumps(value, indent=2) + "\n").encode("utf-8")))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise unreadable(path, exc) from None


def unreadable(path: Path, exc: BaseException, what: str = "checkpoint file") -> GradfilterError:
    """The one-line error for a checkpoint file that cannot be read, with a reason after the
    colon even where the library gives none (an empty file's EOFError)."""
    try:
        empty = path.stat().st_size == 0
    except OSError:
        empty = False
    reason = ("the file is empty (0 bytes: cut off by a crash or a full disk?)" if empty else
              " ".join(str(exc).split()) or type(exc).__name__)
    return GradfilterError(f"{path}: unreadable {what}: {reason}")


def _shown(key: str, value: Any) -> str:
    if key == "data_sha256" and isinstance(value, str):
        value = value[:12]
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"{key}={value}"


@dataclass
class Manifest:
    step: int = 0
    collected: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    finished: bool = False


class Checkpoint:
    """The checkpoint directory of one scoring run (one instance per rank)."""

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any], comm: Comm,
                 layout: Layout, every: int = 50) -> None:
        if every < 1:
            raise GradfilterError("--checkpoint-every must be at least 1")
        self.root = Path(directory)
        self.fingerprint = fingerprint
        self.comm = comm
        self.layout = layout
        self.every = every
        self.manifest = Manifest()
        self.opened = False
        self.runs: list[dict[str, Any]] = []  # runs.json: the runs that worked on it
        self._lock: IO[bytes] | None = None

    # --- opening -------------------------------------------------------------------------

    def open(self) -> Manifest:
        """Check the fingerprint (or record it), tidy up after a kill, read the manifest."""
        if self.root.exists() and not self.root.is_dir():
            raise GradfilterError(f"--checkpoint-dir {self.root} is a file, not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.comm.rank == 0:
            self._lock = _take_lock(self.root)
        path = self.root / "fingerprint.json"
        if path.exists():
            _check_fingerprint(self.root, _read_json(path), self.fingerprint)
        self.comm.barrier()
        if self.comm.rank == 0:
            if not path.exists():
                _write_json(path, self.fingerprint)
            self.manifest = _read_manifest(self.root)
            _tidy(self.root, self.manifest)
        self.comm.barrier()
        self.manifest = _read_manifest(self.root)
        runs = self.root / "runs.json"
        self.runs = _read_json(runs) if runs.exists() else []
        self.opened = True
        return self.manifest

    def record_run(self, **settings: Any) -> None:
        """Add this run to runs.json (rank 0; `_run_entry`); a finished directory, which only
        rebuilds the table, adds nothing."""
        if not self.manifest.finished:
            self.runs.append(_run_entry(self.manifest, self.every, settings))
            if self.comm.rank == 0:
                _write_json(self.root / "runs.json", self.runs)

    def __enter__(self) -> Checkpoint:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the directory for the next run."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- training state ------------------------------------------------------------------

    def _train_dir(self, step: int) -> Path:
        return self.root / f"train-{step:09d}"

    def save_train(self, step: int, members: dict[int, dict], common: dict,
                   keep: bool) -> None:
        """Commit the training state after optimiser step `step` (all ranks call this):
        `members` are the held members' own payloads (this rank writes those it owns; of the
        others, the part it recorded, under `recorded`), `common` what all members share (rank
        0 writes it). Both are opaque here otherwise."""
        directory = self._train_dir(step)
        directory.mkdir(parents=True, exist_ok=True)
        for m, payload in members.items():
            if self.layout.owns(m):
                payload = {"member": m, "step": step, **payload}
                durable_write(directory / f"member{m}.pt", lambda h, p=payload: torch.save(p, h))
            elif "recorded" in payload:
                part = {"member": m, "step": step, "recorded": payload["recorded"]}
                durable_write(directory / f"member{m}.rank{self.comm.rank}.pt",
                              lambda h, p=part: torch.save(p, h))
        if self.comm.rank == 0:
            common = {"step": step, **common}
            durable_write(directory / "common.pt", lambda h: torch.save(common, h))
        self.comm.barrier()
        kept = sorted({*self.manifest.kept, step}) if keep else self.manifest.kept
        self.manifest = Manifest(step, self.manifest.collected, kept, False)
        if self.comm.rank == 0:
            self._commit(self.manifest)
            for old, old_step in _train_dirs(self.root):
                if old_step < step and old_step not in kept:
                    shutil.rmtree(old)
        _sleep_hook()
        _boundary(self.root, f"step {step}")

    def load_train(self, members: list[int]) -> tuple[dict[int, dict], dict]:
        """The last committed training state: the payloads of `members` and the common one."""
        directory = self._train_dir(self.manifest.step)
        return self.load_members(self.manifest.step, members), _load(directory / "common.pt")

    def load_members(self, step: int, members: list[int]) -> dict[int, dict]:
        """The payloads of `members` committed at step `step`, each with what other ranks
        recorded of it (whatever the layout that wrote them) under `recorded_parts`."""
        return _member_payloads(self._train_dir(step), members)

    # --- collection shards ---------------------------------------------------------------

    def _collect_dir(self, epoch: int) -> Path:
        return self.root / f"collect-e{epoch}"

    def save_shard(self, epoch: int, batches: list[int], members: list[int], rows: np.ndarray,
                   losses: np.ndarray, sqnorms: np.ndarray,
                   sketches: np.ndarray | None = None) -> None:
        """Commit the results of whole collection `batches` for `members` (rows x members;
        sketches rows x members x dim, if any)."""
        directory = self._collect_dir(epoch)
        directory.mkdir(parents=True, exist_ok=True)
        which = np.asarray(batches, np.int64)
        digest = hashlib.sha256(which.tobytes()).hexdigest()[:8]  # the batch set, not its ends
        name = f"b{batches[0]:07d}-{batches[-1]:07d}-{digest}-m{'_'.join(map(str, members))}.npz"
        arrays = {"batches": which, "members": np.asarray(members, np.int64),
                  "rows": rows.astype(np.int64), "losses": losses, "sqnorms": sqnorms}
        if sketches is not None:
            arrays["sketches"] = sketches
        durable_write(directory / name, lambda h: np.savez(h, **arrays))
        _sleep_hook()
        _boundary(self.root, f"collection batches {batches[0]}-{batches[-1]} after epoch "
                             f"{epoch}")

    def shards(self, epoch: int) -> list[dict[str, np.ndarray]]:
        """Every committed shard of the collection after `epoch`, in name order."""
        return _read_shards(self._collect_dir(epoch))

    def mark_collected(self, epoch: int) -> None:
        self.comm.barrier()
        collected = sorted({*self.manifest.collected, epoch})
        self.manifest = Manifest(self.manifest.step, collected, self.manifest.kept, False)
        if self.comm.rank == 0:
            self._commit(self.manifest)
        _sleep_hook()
        _boundary(self.root, f"the collection after epoch {epoch}")

    def mark_finished(self) -> None:
        self.comm.barrier()
        self.manifest = Manifest(self.manifest.step, self.manifest.collected,
                                 self.manifest.kept, True)
        if self.comm.rank == 0:
            self._commit(self.manifest)

    def due(self, step: int, at_end: bool) -> bool:
        """Whether the training state is committed after optimiser step `step`."""
        return step % self.every == 0 or at_end

    def _commit(self, manifest: Manifest) -> None:
        _write_json(self.root / "state.json", {"format": FORMAT, **manifest.__dict__})


def _member_payloads(directory: Path, members: list[int]) -> dict[int, dict]:
    payloads = {}
    for m in members:
        parts = sorted(directory.glob(f"member{m}.rank*.pt"))
        payloads[m] = {**_load(directory / f"member{m}.pt"),
                       "recorded_parts": [_load(path)["recorded"] for path in parts]}
    return payloads


def _read_shards(directory: Path) -> list[dict[str, np.ndarray]]:
    shards = []
    for path in sorted(directory.glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                shards.append({key: data[key] for key in data.files})
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise unreadable(path, exc, "collection shard") from None
    return shards


def signals_held(checkpoint: Checkpoint | NullCheckpoint) -> AbstractContextManager:
    """With a checkpoint directory, SIGTERM and SIGHUP are held until its next commit (the
    run stops there and resumes from it); without one they stop the run at once."""
    return (until_boundary() if isinstance(checkpoint, Checkpoint)
            else nullcontext())


def _boundary(root: Path, what: str) -> None:
    """Stop here if SIGTERM or SIGHUP came since the last commit."""
    boundary(f": stopped after committing {what} to {root}; the same command continues "
             "from there")


def _run_entry(manifest: Manifest, every: int, settings: dict[str, Any]) -> dict[str, Any]:
    """A run in runs.json: the step and epochs it starts from and `settings` that are not in
    the fingerprint but produced numbers (the micro-batch budget, the number of processes)."""
    return {"from_step": manifest.step, "collected_before": list(manifest.collected),
            "checkpoint_every": every, **settings}


def _take_lock(root: Path) -> IO[bytes]:
    """One run per directory: two would overwrite each other's commits. The kernel drops the
    lock when the process dies, even by SIGKILL."""
    handle = open(root / "lock", "ab")  # noqa: SIM115 (held until Checkpoint.close())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise GradfilterError(f"checkpoint in {root} is in use by another run") from None
    return handle


def _read_manifest(root: Path) -> Manifest:
    path = root / "state.json"
    if not path.exists():
        return Manifest()
    state = _read_json(path)
    if state.pop("format", None) != FORMAT:
        raise GradfilterError(f"{path}: checkpoint format is not {FORMAT}; use a new "
                              "--checkpoint-dir")
    return Manifest(**state)


def _check_fingerprint(root: Path, stored: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    keys = [k for k in {**stored, **fingerprint} if stored.get(k) != fingerprint.get(k)]
    if not keys:
        return
    made = ", ".join(_shown(k, stored.get(k)) for k in keys)
    this = ", ".join(_shown(k, fingerprint.get(k)) for k in keys)
    raise GradfilterError(
        f"checkpoint in {root} was made with {made}, this run has {this}; "
        "use a new --checkpoint-dir or the same settings"
    )


def _tidy(root: Path, manifest: Manifest) -> None:
    """Remove what a kill left half-done: temporary files, uncommitted or stale train dirs."""
    for tmp in root.rglob(".*.tmp"):
        tmp.unlink()
    for directory, step in _train_dirs(root):
        if step != manifest.step and step not in manifest.kept:
            shutil.rmtree(directory)


def _train_dirs(root: Path) -> list[tuple[Path, int]]:
    """The training checkpoint directories under `root` and their steps."""
    found = []
    for path in root.glob("train-*"):
        step = path.name.removeprefix("train-")
        if path.is_dir() and step.isdigit():
            found.append((path, int(step)))
    return found


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise unreadable(path, exc) from None


def _sleep_hook() -> None:
    seconds = os.environ.get(SLEEP_HOOK)
    if seconds:
        time.sleep(float(seconds))


class NullCheckpoint:
    """No checkpoint directory: the same calls, nothing stored, nothing to resume."""

    every = 50  # collection results reach the host this often (batches)

    def __init__(self) -> None:
        self.manifest = Manifest()

    def open(self) -> Manifest:
        return self.manifest

    def close(self) -> None:
        pass

    def __enter__(self) -> NullCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def due(self, step: int, at_end: bool) -> bool:
        return False

    def save_shard(self, *args: Any) -> None:
        pass

    def record_run(self, **settings: Any) -> None:
        pass

    def shards(self, epoch: int) -> list[dict[str, np.ndarray]]:
        return []

    def mark_collected(self, epoch: int) -> None:
        pass

    def mark_finished(self) -> None:
        pass
