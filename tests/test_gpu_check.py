"""benchmarks/perf/gpu_check.py runs from a clean checkout (PYTHONPATH=src) and writes its JSON, so
it cannot rot between GPU slots. Here: a 2-layer model on the CPU, a 60-second budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import alpaca_records, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "perf"))

import gpu_check  # noqa: E402  (benchmarks/perf/ is not a package)


def test_gpu_check_tiny_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    script = ROOT / "benchmarks" / "perf" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--tiny",
                             "--budget-seconds", "60", "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=600)
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
    multi = parts["multi_gpu"]["skipped"]  # on a CPU: for want of GPUs (or of time)
    assert multi == "0 GPU(s): the multi-GPU case needs 2 or more" or "needs about" in multi
    if "fused_over_naive" in parts["naive"]:
        assert parts["naive"]["max_relative_difference"] < 1e-4
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("gradfilter GPU check on cpu") and summary in result.stdout
    assert len(list(tmp_path.iterdir())) <= 8


def test_multi_gpu_worker_runs_data_parallel_on_cpu(tmp_path):
    """The multi-GPU part's worker, as torchrun starts it, here on 2 gloo CPU processes (the
    tiny model, 6 records): both modes timed, every rank's share of the work recorded."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "2",
                             str(ROOT / "benchmarks" / "perf" / "gpu_check.py"), "--worker",
                             "--tiny", "--device", "cpu", "--records", "6", "--out",
                             str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "multi_gpu.json").read_text())
    assert figures["processes"] == 2 and figures["records"] == 6
    assert set(figures["modes"]) == {"during", "snapshot"}
    for mode in figures["modes"].values():
        assert mode["examples_per_s"] == pytest.approx(6 / mode["seconds"])
        assert mode["examples_per_s_per_process"] == pytest.approx(mode["examples_per_s"] / 2)
    # M = 4 on 2 processes: the member split, each rank its two members' whole batches
    layout = figures["layout"]
    assert [p["members"] for p in layout] == [[0, 2], [1, 3]]
    assert [p["examples_trained"] for p in layout] == [[6, 6], [6, 6]]
    assert [p["examples_collected"] for p in layout] == [{"1": 6, "2": 6}] * 2


def test_packed_run_drops_the_mixed_sets_before_it_gives_up(tmp_path, monkeypatch):
    run = tmp_path / "noise"
    (run / "tables").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    (run / "tables" / "gsnr.parquet").write_bytes(os.urandom(1000))
    (run / "mixed-s0.jsonl").write_bytes(os.urandom(50_000))  # random bytes do not compress
    archive = tmp_path / "noise-run.tar.gz"

    def names() -> set[str]:
        with tarfile.open(archive) as tar:
            return set(tar.getnames())

    assert gpu_check.pack_run(run, archive) == "with the mixed sets"
    assert names() == {"noise/results.json", "noise/tables/gsnr.parquet", "noise/mixed-s0.jsonl"}
    monkeypatch.setattr(gpu_check, "PACK_LIMIT", 20_000)
    assert gpu_check.pack_run(run, archive) == "without the mixed sets"
    assert names() == {"noise/results.json", "noise/tables/gsnr.parquet"}
    monkeypatch.setattr(gpu_check, "PACK_LIMIT", 100)
    assert gpu_check.pack_run(run, archive) == "too large to come back"
    assert not archive.exists()


def test_quality_part_measures_the_study_and_packs_its_run(tmp_path, gpt2_proxy):
    data = tmp_path / "data.jsonl"
    write_jsonl(data, alpaca_records(200))
    # a budget far above what 200 records take: the whole file is benchmarked
    part = gpu_check.quality_part(gpt2_proxy, str(data), tmp_path, 1e6, "cpu", 64)
    assert part["packed"] == "with the mixed sets"
    assert set(part["results"]) == set(gpu_check.QUALITY_METHODS)
    with tarfile.open(tmp_path / "noise-run.tar.gz") as tar:
        names = set(tar.getnames())
        results = json.load(tar.extractfile("noise/results.json"))
    # every answered record of the file (the few without an answer are not benchmarked)
    assert part["records"] == results["seeds"]["0"]["records"] > 150
    assert {"noise/results.json", "noise/labels-s0.parquet", "noise/mixed-s0.jsonl"} <= names
    assert any(n.startswith("noise/scores/gsnr-") for n in names)
    report = (tmp_path / "noise.md").read_text()
    assert all(kind in report for kind in ("refusal", "shuffle", "boilerplate"))
