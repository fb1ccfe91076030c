"""Logs a person can read: other libraries' progress bars only on a terminal with progress on,
lines never wrapped at 80 columns, loading and tokenising reported like the other phases, and
an unreachable hub fails at once with the fixes in one line."""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

from conftest import alpaca_records, write_json

from gradfilter import progress


def test_library_bars_are_off_inside_the_block_and_back_after_it():
    from tqdm import std
    from tqdm.auto import tqdm as auto_tqdm

    def drawn(make) -> str:
        out = io.StringIO()
        for _ in make(range(3), file=out, mininterval=0, desc="Loading weights"):
            pass
        return out.getvalue()

    with progress.library_bars(False):
        assert drawn(std.tqdm) == "" and drawn(auto_tqdm) == ""  # subclasses too
    assert "Loading weights" in drawn(std.tqdm) and "Loading weights" in drawn(auto_tqdm)
    with progress.library_bars(True):
        assert "Loading weights" in drawn(auto_tqdm)


def test_library_bars_show_only_on_a_terminal_with_progress_on(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.shows_library_bars(True)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.shows_library_bars(True) and not progress.shows_library_bars(False)


def _gradfilter(*args: object, cwd: Path, env: dict | None = None):
    """`gradfilter ARGS` in a subprocess with stderr to a file (not a terminal)."""
    log = cwd / "stderr.log"
    with open(log, "w") as stderr:
        result = subprocess.run([sys.executable, "-m", "gradfilter", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd,
                                env={**os.environ, **(env or {})}, timeout=600)
    return result.returncode, result.stdout, log.read_text()


def test_a_log_holds_phase_lines_and_unwrapped_paths_and_no_library_bars(tmp_path,
                                                                         gpt2_proxy):
    data = write_json(tmp_path / "d.json", alpaca_records(6))
    out = tmp_path / ("a-directory-whose-name-is-long-enough-to-pass-eighty-columns" * 2)
    out.mkdir()
    code, _, log = _gradfilter("score", data, "--out", out / "stats.parquet", "--proxy",
                               gpt2_proxy, "--method", "loss", "--device", "cpu", cwd=tmp_path)
    assert code == 0, log
    lines = log.splitlines()
    assert re.fullmatch(r"load tokenizer .+: done in [\d.]+ s", lines[0]), lines
    assert re.fullmatch(r"tokenize: 6/6 records, .+, done in [\d.]+ s", lines[1]), lines
    assert re.fullmatch(r"load proxy .+: done in [\d.]+ s", lines[2]), lines
    assert f"statistics table: {out / 'stats.parquet'} (6 records" in log  # on one line
    assert "Loading weights" not in log and "it/s" not in log and "\r" not in log


def test_quiet_prints_no_phase_lines(tmp_path, gpt2_proxy):
    data = write_json(tmp_path / "d.json", alpaca_records(4))
    code, _, log = _gradfilter("score", data, "--out", tmp_path / "s.parquet", "--proxy",
                               gpt2_proxy, "--method", "loss", "--device", "cpu", "--quiet",
                               cwd=tmp_path)
    assert code == 0, log
    assert "statistics table:" in log
    assert not any(" done in " in line or "it/s" in line for line in log.splitlines()), log


class _DeadHub:
    """A local 'hub' that reads each request's first line and closes the connection without
    an answer, keeping the request lines."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                try:
                    self.requests.append(connection.recv(4096).split(b"\r\n")[0].decode())
                except OSError:
                    self.requests.append("")


def test_an_unreachable_hub_fails_at_once_naming_the_fixes(tmp_path):
    """The default proxy (a hub id) with the hub unreachable and an empty cache: one probe and
    no request for the model's files (the hub client's retries took about 50 s), then one line
    naming the local-model and offline fixes."""
    hub = _DeadHub()
    data = write_json(tmp_path / "d.json", alpaca_records(3))
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.port}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "0", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    try:
        code, stdout, err = _gradfilter("score", data, "--out", tmp_path / "s.parquet",
                                        "--method", "length", cwd=tmp_path, env=env)
    finally:
        hub.socket.close()
    assert code == 2 and err.count("\n") == 1 and stdout == "", err
    assert err.startswith("error: cannot load the proxy tokenizer 'gpt2': the Hugging Face hub "
                          f"(http://127.0.0.1:{hub.port}) is not reachable")
    assert "--proxy DIR" in err and "FILE.gguf" in err and "HF_HUB_OFFLINE=1" in err
    assert hub.requests.count("HEAD / HTTP/1.1") == 1
    assert not [line for line in hub.requests if "gpt2" in line], hub.requests
    assert not (tmp_path / "s.parquet").exists()


def test_the_probe_names_why_the_hub_cannot_be_reached():
    from gradfilter.scoring.proxy import hub_unreachable

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    assert "refused" in hub_unreachable(f"http://127.0.0.1:{port}")
