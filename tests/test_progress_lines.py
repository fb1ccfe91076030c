"""Progress when nobody watches a terminal: plain lines on stderr at a steady interval and at
the end of each phase (a log file, CI, nohup); bars on a terminal; nothing with --quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from conftest import alpaca_records, write_json
from rich.progress import Progress

from gradfilter import progress

LINE = re.compile(r"^(?P<phase>.+): (?P<done>\d+)/(?P<total>\d+) examples, [\d.e+-]+ ex/s, "
                  r"(?P<tail>.+ left|done in .+)$")
TINY = ["--members", "2", "--epochs", "2", "--lora-rank", "2", "--batch-size", "4",
        "--collect-batch-size", "4", "--device", "cpu"]


def _score_with_stderr_to_a_file(tmp_path, proxy: str, *extra: str) -> list[str]:
    data = write_json(tmp_path / "d.json", alpaca_records(10))
    log = tmp_path / "stderr.log"
    env = {**os.environ, progress.INTERVAL_ENV: "0"}
    with open(log, "w") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", "gradfilter", "score", str(data), "--out",
             str(tmp_path / "s.parquet"), "--proxy", proxy, "--collect", "snapshot",
             "--no-ifd-pass", *TINY, *extra],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env, timeout=600)
    assert result.returncode == 0, log.read_text()
    return [line for line in log.read_text().splitlines() if LINE.match(line)]


def test_plain_lines_for_every_phase_when_stderr_is_a_file(tmp_path, gpt2_proxy):
    lines = _score_with_stderr_to_a_file(tmp_path, gpt2_proxy)
    phases = ["train epoch 1/2 x2 members", "collect gradients after epoch 1",
              "train epoch 2/2 x2 members", "collect gradients after epoch 2"]
    matches = [LINE.match(line) for line in lines]
    assert [m["phase"] for m in matches if m["tail"].startswith("done in")] == phases
    for phase in phases:
        mine = [m for m in matches if m["phase"] == phase]
        done = [int(m["done"]) for m in mine]  # a line every batch, at interval 0
        assert len(done) == 3 and done == sorted(done) and done[-1] == 10
        assert {int(m["total"]) for m in mine} == {10}
        assert all(m["tail"].endswith(" left") for m in mine[:-1])


def test_quiet_silences_the_lines(tmp_path, gpt2_proxy):
    assert _score_with_stderr_to_a_file(tmp_path, gpt2_proxy, "--quiet") == []


def test_lines_come_at_the_interval_and_at_the_end(monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setenv(progress.INTERVAL_ENV, "30")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress.progress_bars(True) as bars:
        task = bars.add_task("train epoch 1/2 x4 members", total=640, rate="")
        for _ in range(16):  # 40 examples every 10 s
            clock[0] += 10
            progress.advance_bar(bars, task, 40, 0.0)
    lines = sys.stderr.getvalue().splitlines()
    assert lines == [
        "train epoch 1/2 x4 members: 120/640 examples, 4.0 ex/s, 2 min 10 s left",
        "train epoch 1/2 x4 members: 240/640 examples, 4.0 ex/s, 1 min 40 s left",
        "train epoch 1/2 x4 members: 360/640 examples, 4.0 ex/s, 1 min 10 s left",
        "train epoch 1/2 x4 members: 480/640 examples, 4.0 ex/s, 40 s left",
        "train epoch 1/2 x4 members: 600/640 examples, 4.0 ex/s, 10 s left",
        "train epoch 1/2 x4 members: 640/640 examples, 4.0 ex/s, done in 2 min 40 s",
    ]


def test_a_terminal_keeps_the_bars(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bars = progress.progress_bars(True)
    assert isinstance(bars, Progress) and not isinstance(bars, progress.PlainProgress)


@pytest.mark.parametrize(("seconds", "text"), [(12.4, "12 s"), (150, "2 min 30 s"),
                                               (3900, "1 h 5 min")])
def test_durations_read_as_people_write_them(seconds, text):
    assert progress.duration(seconds) == text


def test_a_task_counting_steps_says_steps(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    monkeypatch.setenv(progress.INTERVAL_ENV, "1000")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with progress.progress_bars(True) as bars:
        task = bars.add_task("fine-tune seed 0", total=4, rate="", unit="steps")
        for _ in range(4):
            clock[0] += 5
            progress.advance_bar(bars, task, 1, 0.0)
        assert bars.tasks[task].fields["rate"] == "0.2 steps/s"
    assert sys.stderr.getvalue().splitlines() == [
        "fine-tune seed 0: 4/4 steps, 0.2 steps/s, done in 20 s"]
