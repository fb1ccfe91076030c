"""benchmarks/gpu_check.py runs from a clean checkout (PYTHONPATH=src) and writes its JSON, so
it cannot rot between GPU slots. Here: a 2-layer model on the CPU, a 60-second budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out",
                             str(tmp_path), "--tiny", "--budget-seconds", "60", "--device",
                             "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["alpaca_percentiles"]["percent"][3] == 50
    parts = report["parts"]
    assert not [name for name, part in parts.items() if "error" in part]
    assert parts["precision"] == {"skipped": "no bf16 GPU: nothing to compare"}
    pipeline = parts["pipeline_snapshot"]
    assert pipeline["records"] == 16 and pipeline["examples_per_s"] > 0
    assert pipeline["projected_52k_seconds"] == 52_002 * pipeline["seconds"] / 16
    assert {"train_epoch1", "collect_epoch2"} <= set(pipeline["phase_seconds"])
    during = parts["pipeline_during"]  # the training passes record: no collection phase
    assert during["records"] == 16 and during["passes_per_example"] == 2 * 4
    assert not [phase for phase in during["phase_seconds"] if phase.startswith("collect")]
    assert set(parts) >= {"naive", "ifd"}  # measured, or skipped when the budget ran out
    if "fused_over_naive" in parts["naive"]:
        assert parts["naive"]["max_relative_difference"] < 1e-4
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("gradfilter GPU check on cpu") and summary in result.stdout
    assert len(list(tmp_path.iterdir())) <= 8
