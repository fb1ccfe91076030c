"""SIGTERM and SIGHUP stop a command as Ctrl-C does (issue 35, point 4): the temporary file of
the output being written is removed, `aborted` is printed, the exit code is 128 + the signal. A
checkpointed scoring run stops at its next commit, and a resume with another micro-batch budget
records every budget that produced the table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, write_json, write_jsonl

import gradfilter as gf
from gradfilter.scoring.checkpoint import SLEEP_HOOK

# `gradfilter` with the input read slowly (20 ms a record), so that a signal lands mid-write.
SLOW_SELECT = """
import time
import gradfilter.subset as subset
read = subset._read
def slow(*args, **kwargs):
    for record in read(*args, **kwargs):
        time.sleep(0.02)
        yield record
subset._read = slow
from gradfilter.cli import main
main()
"""


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != SLEEP_HOOK}
    return {**env, "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _wait_for(proc: subprocess.Popen, condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the command ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_select_stopped_by_a_signal_leaves_nothing(tmp_path, signum):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(300))
    pq.write_table(pa.table({"gsnr": np.arange(300, dtype=np.float64)}), tmp_path / "s.parquet")
    before = sorted(os.listdir(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SELECT, "select", str(data), "--stats",
         str(tmp_path / "s.parquet"), "--ratio", "0.9", "--out", str(tmp_path / "o.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for(proc, lambda: any(p.endswith(".tmp") for p in os.listdir(tmp_path)),
              "the subset's temporary file")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert err == f"aborted ({signal.Signals(signum).name})\n"
    assert sorted(os.listdir(tmp_path)) == before


def test_a_signal_is_held_to_the_boundary_and_a_second_one_is_not():
    from gradfilter import interrupts

    with interrupts.handled():
        with pytest.raises(interrupts.Interrupted) as caught, interrupts.until_boundary():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler ran: held, nothing raised yet
            interrupts.boundary(": at the boundary")
        assert caught.value.exit_code == 143 and str(caught.value) == "SIGTERM: at the boundary"
        with pytest.raises(interrupts.Interrupted) as caught, interrupts.until_boundary():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGHUP)  # a second one stops at once
            time.sleep(5)
        assert caught.value.signum == signal.SIGHUP and caught.value.detail == ""
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


SETTINGS = dict(members=2, lora_rank=2, batch_size=4, collect_batch_size=4, seed=3,
                max_length=48, sketch_dim=8, ifd_pass=False)


def test_score_stops_at_its_next_commit_and_the_resume_records_both_budgets(tmp_path,
                                                                            gpt2_proxy):
    data = write_json(tmp_path / "d.json", alpaca_records(12))
    out, checkpoint = tmp_path / "s.parquet", tmp_path / "ck"
    args = ["score", str(data), "--out", str(out), "--proxy", gpt2_proxy, "--device", "cpu",
            "--quiet", "--checkpoint-dir", str(checkpoint), "--checkpoint-every", "1",
            "--batch-tokens", "500", "--no-ifd-pass",
            *(f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items() if k != "ifd_pass")]
    proc = subprocess.Popen([sys.executable, "-m", "gradfilter", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(**{SLEEP_HOOK: "0.3"}))
    state = checkpoint / "state.json"
    _wait_for(proc, lambda: state.exists() and json.loads(state.read_text())["step"] >= 1,
              "the commit of step 1")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = json.loads(state.read_text())["step"]
    assert 1 <= step < 6 and not out.exists()
    assert err.endswith(f"aborted (SIGTERM: stopped after committing step {step} to "
                        f"{checkpoint}; the same command continues from there)\n")
    assert not list(checkpoint.rglob("*.tmp"))

    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", batch_tokens=10**6, **SETTINGS)
    gf.score(data, out, config, progress=False, checkpoint_dir=checkpoint)
    record = json.loads(Path(f"{out}.run.json").read_text())
    runs = record["checkpoint"]["runs"]
    assert [(run["from_step"], run["batch_tokens"]) for run in runs] == [(0, 500),
                                                                        (step, 10**6)]
    assert record["checkpoint"]["resumed_from_step"] == step
    again = gf.score(data, tmp_path / "again.parquet", replace(config, batch_tokens=700),
                     progress=False, checkpoint_dir=checkpoint)  # finished: rebuilds only
    assert again.num_rows == 12
    record = json.loads((tmp_path / "again.parquet.run.json").read_text())
    assert [run["batch_tokens"] for run in record["checkpoint"]["runs"]] == [500, 10**6]
