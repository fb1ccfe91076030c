"""The rule the package lives by: reading, inspecting, selecting, reports and help never import
torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import alpaca_records, write_jsonl

from gradfilter.table import sketch_columns

PROBE = """
import json, runpy, sys
sys.argv = ["gradfilter", *json.loads(sys.argv[1])]
try:
    if sys.argv[1:] == ["import"]:
        import gradfilter
        gradfilter.read_dataset, gradfilter.select, gradfilter.load_stats
    else:
        runpy.run_module("gradfilter", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps([code, sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))]))
"""


def _torch_modules_after(*args: str, code: int = 0) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    exit_code, modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert exit_code == code, result.stderr
    return modules


def test_import_help_select_and_inspect_never_import_torch(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(6))
    sketches = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    sketch = sketch_columns(sketches, np.arange(6), 6)
    pq.write_table(pa.table({"gsnr": np.arange(6, dtype=np.float64),
                             "sketch_e2_m0": sketch["sketch"]}), tmp_path / "s.parquet")
    trajectories = {f"{stat}_e{e}_m0": np.random.default_rng(e).uniform(1, 2, 6)
                    for stat in ("loss", "sqnorm") for e in (1, 2)}
    pq.write_table(pa.table(trajectories), tmp_path / "t.parquet")
    for args in (["import"], ["--help"], ["select", "--help"], ["score", "--help"],
                 ["bench", "noise", "--help"], ["inspect", str(data)],
                 ["--debug", "inspect", str(data), "--strict"],
                 ["select", str(data), "--stats", str(tmp_path / "s.parquet"), "--count", "2",
                  "--out", str(tmp_path / "out.jsonl")],
                 ["select", str(data), "--stats", str(tmp_path / "s.parquet"), "--count", "3",
                  "--diversity", "dedup", "--out", str(tmp_path / "diverse.jsonl")],
                 ["select", str(data), "--stats", str(tmp_path / "t.parquet"), "--count", "2",
                  "--stratify", "clusters:2", "--out", str(tmp_path / "strata.jsonl"),
                  "--report", str(tmp_path / "strata.html")],
                 ["report", str(tmp_path / "s.parquet"), "--data", str(data), "--count", "2",
                  "--out", str(tmp_path / "page.html")]):
        assert _torch_modules_after(*args) == [], args
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "diverse.jsonl").read_text().count("\n") == 3
    assert (tmp_path / "strata.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "report.html").is_file() and (tmp_path / "page.html").is_file()
    assert (tmp_path / "strata.html").is_file()


def test_refusals_and_errors_never_import_torch(tmp_path):
    """An output over an input, a dataset given as the table, a failing --strict: one line and
    exit 2 (1 for --strict), torch never loaded."""
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(6))
    bad = write_jsonl(tmp_path / "bad.jsonl", [*alpaca_records(2), {"instruction": "x"}])
    for args, code in ((["select", str(data), "--stats", str(data), "--count", "2", "--out",
                         str(tmp_path / "o.jsonl")], 2),
                       (["select", str(data), "--stats", str(tmp_path / "none.parquet"),
                         "--count", "2", "--out", str(data)], 2),
                       (["inspect", str(bad), "--strict"], 1)):
        assert _torch_modules_after(*args, code=code) == [], args
