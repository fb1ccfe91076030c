"""--checkpoint-dir: a run killed with SIGKILL and started again gives the very same table."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import alpaca_records, column_values, write_json

import gradfilter as gf
from gradfilter.scoring.checkpoint import SLEEP_HOOK
from gradfilter.table import load_stats

N_RECORDS = 40  # 10 optimiser steps per epoch, 10 collection batches per collected epoch
# batch_tokens 500: most steps and collection batches (8 rows of 52-177 tokens) run as 2-4
# micro-batches, so a kill can land between a step's micro-batches too.
SETTINGS = dict(members=2, lora_rank=2, batch_size=4, collect_batch_size=4, lr=5e-3, seed=3,
                batch_tokens=500, collect="snapshot")
TOTAL_STEPS = 2 * N_RECORDS // SETTINGS["batch_size"]


def _cli_args(data: Path, out: Path, proxy: str, checkpoint: Path, every: int = 2,
              **overrides) -> list[str]:
    settings = {**SETTINGS, **overrides}
    args = ["score", str(data), "--out", str(out), "--proxy", proxy, "--device", "cpu",
            "--quiet", "--checkpoint-dir", str(checkpoint), "--checkpoint-every", str(every)]
    for name, value in settings.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def _launch(args: list[str], logs: Path, sleep: float | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(SLEEP_HOOK, None)
    if sleep is not None:
        env[SLEEP_HOOK] = str(sleep)
    logs.mkdir(exist_ok=True)
    n = len(list(logs.iterdir()))
    with open(logs / f"{n}.out", "w") as stdout, open(logs / f"{n}.err", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gradfilter", *args], env=env,
                                stdout=stdout, stderr=stderr)
    proc.stderr_path = logs / f"{n}.err"  # type: ignore[attr-defined]
    return proc


def _state(checkpoint: Path) -> dict:
    path = checkpoint / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def _finish(args: list[str], logs: Path) -> None:
    proc = _launch(args, logs)
    assert proc.wait(timeout=300) == 0, proc.stderr_path.read_text()  # type: ignore[attr-defined]


def _assert_same_statistics(table, reference) -> None:
    columns = [c for c in reference.column_names
               if c.startswith(("loss_", "sqnorm_", "sketch"))]
    assert any(c.startswith("sketch_") for c in columns)  # the sketches go through it too
    assert columns and [c for c in table.column_names if c in columns] == columns
    for column in columns:  # bitwise: same values, same NaNs
        assert np.array_equal(column_values(table, column), column_values(reference, column),
                              equal_nan=True), column


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_json(tmp_path_factory.mktemp("resume") / "alpaca.json",
                      alpaca_records(N_RECORDS))


@pytest.fixture(scope="module")
def reference_run(data, gpt2_proxy, tmp_path_factory):
    """The uninterrupted run, without any checkpoint: its table and its adapters."""
    root = tmp_path_factory.mktemp("reference")
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", **SETTINGS)
    table = gf.score(data, root / "stats.parquet", config, progress=False,
                     save_adapters=root / "adapters")
    return table, root / "adapters"


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[0]


def test_killed_in_training_and_in_collection_then_resumed(tmp_path, data, gpt2_proxy,
                                                           reference_run):
    reference, reference_adapters = reference_run
    checkpoint, out, logs = tmp_path / "ckpt", tmp_path / "stats.parquet", tmp_path / "logs"
    args = _cli_args(data, out, gpt2_proxy, checkpoint)

    # 1: killed mid-training, while it pauses after committing step 4 or later of epoch 1
    proc = _launch(args, logs, sleep=0.25)
    _wait_until(proc, lambda: _state(checkpoint).get("step", 0) >= 4, "a committed step >= 4")
    assert _kill(proc) == -signal.SIGKILL
    assert 4 <= _state(checkpoint)["step"] < TOTAL_STEPS
    assert not _state(checkpoint)["finished"]

    # 2: resumed, then killed inside the collection pass after epoch 1
    proc = _launch(args, logs, sleep=0.25)
    shards = checkpoint / "collect-e1"
    _wait_until(proc, lambda: shards.is_dir() and any(shards.glob("*.npz")),
                "a collection shard")
    assert _kill(proc) == -signal.SIGKILL
    assert 1 not in _state(checkpoint)["collected"] and not out.exists()

    # 3: resumed to the end
    _finish(args, logs)
    _assert_same_statistics(load_stats(out), reference)
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    assert record["checkpoint"]["resumed_from_step"] == 10  # the commit at the end of epoch 1
    assert "train_epoch1" not in record["wall_seconds"]
    assert _state(checkpoint)["finished"] and _state(checkpoint)["step"] == TOTAL_STEPS

    # 4: a finished checkpoint rebuilds the table without training or collecting, and can
    # still export each collected epoch's adapters (from the snapshots it keeps)
    again = gf.score(data, tmp_path / "again.parquet",
                     gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", **SETTINGS),
                     progress=False, checkpoint_dir=checkpoint,
                     save_adapters=tmp_path / "adapters")
    _assert_same_statistics(again, reference)
    record = json.loads((tmp_path / "again.parquet.run.json").read_text())
    assert not any(k.startswith("train_epoch") for k in record["wall_seconds"])
    for epoch in (1, 2):
        for member in (0, 1):
            name = f"epoch{epoch}/member{member}/adapter_model.safetensors"
            assert (tmp_path / "adapters" / name).read_bytes() == \
                (reference_adapters / name).read_bytes(), name


def test_killed_at_an_arbitrary_moment_then_resumed(tmp_path, data, gpt2_proxy, reference):
    """No coordination: a kill at a random moment after the first commit, committing every
    step and every collection batch, so the kill often lands inside a write."""
    checkpoint, out, logs = tmp_path / "ckpt", tmp_path / "stats.parquet", tmp_path / "logs"
    args = _cli_args(data, out, gpt2_proxy, checkpoint, every=1)
    delay = random.uniform(0.0, 1.5)
    proc = _launch(args, logs)
    _wait_until(proc, lambda: (checkpoint / "state.json").exists(), "the first commit")
    time.sleep(delay)
    code = _kill(proc)
    print(f"killed after {delay:.2f} s: rc {code}, state {_state(checkpoint)}")
    _finish(args, logs)
    _assert_same_statistics(load_stats(out), reference)
    assert not list(checkpoint.rglob("*.tmp"))


@pytest.fixture(scope="module")
def during_reference(data, gpt2_proxy, tmp_path_factory):
    """The uninterrupted --collect during run."""
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", **{**SETTINGS, "collect": "during"})
    return gf.score(data, tmp_path_factory.mktemp("during") / "stats.parquet", config,
                    progress=False)


def test_during_killed_inside_the_late_epoch_then_resumed(tmp_path, data, gpt2_proxy,
                                                          during_reference):
    """--collect during: the epoch in progress's statistics travel in the training checkpoints,
    so a run killed in the middle of epoch t (statistics of t partly recorded) resumes to the
    uninterrupted run's table, bit for bit; the finished directory rebuilds it."""
    checkpoint, out, logs = tmp_path / "ckpt", tmp_path / "stats.parquet", tmp_path / "logs"
    args = _cli_args(data, out, gpt2_proxy, checkpoint, collect="during")
    proc = _launch(args, logs, sleep=0.25)
    _wait_until(proc, lambda: _state(checkpoint).get("step", 0) >= 14, "a committed step >= 14")
    assert _kill(proc) == -signal.SIGKILL
    step = _state(checkpoint)["step"]
    assert 14 <= step < TOTAL_STEPS and not out.exists()
    payload = torch.load(checkpoint / f"train-{step:09d}" / "member1.pt", weights_only=True)
    late = int(payload["recorded"]["2"]["filled"].sum())
    assert 0 < late < N_RECORDS  # epoch 2 partly recorded
    assert int(payload["recorded"]["1"]["filled"].sum()) == N_RECORDS
    _finish(args, logs)
    _assert_same_statistics(load_stats(out), during_reference)
    again = gf.score(data, tmp_path / "again.parquet",
                     gf.ScoreConfig(proxy=gpt2_proxy, device="cpu",
                                    **{**SETTINGS, "collect": "during"}), progress=False,
                     checkpoint_dir=checkpoint)
    _assert_same_statistics(again, during_reference)


def test_other_settings_on_resume_are_refused(tmp_path, data, gpt2_proxy):
    checkpoint = tmp_path / "ckpt"
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", **{**SETTINGS, "members": 1})
    gf.score(data, tmp_path / "a.parquet", config, progress=False, checkpoint_dir=checkpoint,
             checkpoint_every=100)
    out = tmp_path / "b.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "gradfilter",
         *_cli_args(data, out, gpt2_proxy, checkpoint, members=1, lr=0.001)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: checkpoint in {checkpoint} was made with lr=0.005, this run has lr=0.001; "
        "use a new --checkpoint-dir or the same settings")
    assert not out.exists()

    # Several differences are all named; other data is refused too.
    with pytest.raises(gf.GradfilterError, match=r"made with seed=3, length_bucketing=True, "
                                                 r"this run has seed=4, length_bucketing=False"):
        gf.score(data, out, replace(config, seed=4, length_bucketing=False), progress=False,
                 checkpoint_dir=checkpoint)
    other = write_json(tmp_path / "other.json", alpaca_records(N_RECORDS - 1))
    with pytest.raises(gf.GradfilterError, match=r"made with records=40, data_sha256=\w{12}, "
                                                 r"this run has records=39, data_sha256="):
        gf.score(other, out, config, progress=False, checkpoint_dir=checkpoint)
    # What changes no number (beyond float rounding) may change: checkpoint frequency, the
    # micro-batch budget.
    table = gf.score(data, out, replace(config, batch_tokens=10**6), progress=False,
                     checkpoint_dir=checkpoint, checkpoint_every=3)
    assert table.num_rows == N_RECORDS
