"""`bench speed`: its naive reference (PEFT per member, one backward per example) must agree
with the fused path number for number, or its speed ratio would compare different work."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import alpaca_records, cli_process, write_json


def test_bench_speed_reports_every_path_and_naive_agrees_with_fused(tmp_path, gpt2_proxy):
    data = write_json(tmp_path / "a.json", alpaca_records(6))
    out = tmp_path / "speed.json"
    result = cli_process("bench", "speed", str(data), "--proxy", gpt2_proxy, "--members", "2",
                         "--lora-rank", "2", "--batch-size", "2", "--collect-batch-size", "3",
                         "--lr", "0.01", "--max-length", "200", "--device", "cpu",
                         "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"fused", "naive", "ifd"}
    for path in report["paths"].values():
        assert path["examples"] == 6 and path["seconds"] > 0 and path["host_peak_mib"] > 0
    assert report["max_relative_difference_fused_vs_naive"] < 1e-4
    assert report["fused_over_naive"] > 0
    assert "a/b (fused throughput / naive throughput)" in result.stdout
    assert (tmp_path / "speed.json.run.json").is_file()


def test_bench_speed_compares_during_with_snapshot(tmp_path, gpt2_proxy):
    data = write_json(tmp_path / "a.json", alpaca_records(10))
    out = tmp_path / "speed.json"
    result = cli_process("bench", "speed", str(data), "--proxy", gpt2_proxy, "--members", "2",
                         "--lora-rank", "2", "--batch-size", "2", "--lr", "0.01",
                         "--max-length", "200", "--device", "cpu", "--paths",
                         "during,snapshot", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"during", "snapshot"} and report["during_over_snapshot"] > 0
    assert not any(k.startswith("collect_") for k in report["during_phase_seconds"])
    assert "collect_epoch2" in report["snapshot_phase_seconds"]
    agreement = report["during_vs_snapshot_agreement"]
    assert set(agreement) >= {"gsnr", "gsnr-cv"}
    for figures in agreement.values():
        assert -1 <= figures["spearman"] <= 1 and 0 <= figures["top_overlap"] <= 1
    assert "during vs snapshot, gsnr-cv: Spearman" in result.stdout


def test_bench_speed_under_torchrun_reports_per_process_figures(tmp_path, gpt2_proxy):
    """2 gloo processes sharing both members' batches: the during path timed on both, then on
    rank 0 alone; figures per process and the 1 -> 2 speed-up, printed and written once."""
    data = write_json(tmp_path / "a.json", alpaca_records(6))
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "gradfilter", "bench", "speed", str(data), "--proxy", gpt2_proxy, "--members",
         "2", "--member-groups", "1", "--lora-rank", "2", "--batch-size", "2", "--lr", "0.01",
         "--max-length", "200", "--device", "cpu", "--paths", "during", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["processes"] == 2
    assert [(p["members"], p["shard"]) for p in report["layout"]] == [([0, 1], 0), ([0, 1], 1)]
    during = report["paths"]["during"]
    assert during["processes"] == 2 and during["examples"] == 6
    assert during["examples_per_s"] == pytest.approx(6 / during["seconds"])
    assert during["examples_per_s_per_process"] == pytest.approx(during["examples_per_s"] / 2)
    scaling = report["scaling"]["during"]
    assert scaling["processes"] == 2 and scaling["seconds"] == during["seconds"]
    assert scaling["speedup"] == pytest.approx(scaling["one_process_seconds"] / during["seconds"])
    assert result.stdout.count("during: 1 -> 2 processes:") == 1


def test_bench_speed_times_the_target_pass_beside_the_plain_path(tmp_path, gpt2_proxy):
    """--target-examples: by default during and during+target, back to back; the overhead
    ratio is the two timings' and the target passes are the +target run's own phases."""
    data = write_json(tmp_path / "a.json", alpaca_records(10))
    target = write_json(tmp_path / "t.json", alpaca_records(2))
    out = tmp_path / "speed.json"
    result = cli_process("bench", "speed", str(data), "--target-examples", str(target),
                         "--proxy", gpt2_proxy, "--members", "2", "--lora-rank", "2",
                         "--batch-size", "2", "--lr", "0.01", "--max-length", "200",
                         "--sketch-dim", "16", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert list(report["paths"]) == ["during", "during+target"]
    assert report["target_examples"] == 2
    plain, targeted = report["paths"]["during"], report["paths"]["during+target"]
    assert targeted["row_tokens"] > plain["row_tokens"]
    overhead = report["target_overhead"]["during"]
    assert overhead["ratio"] == pytest.approx(targeted["seconds"] / plain["seconds"])
    assert overhead["cpu_ratio"] == pytest.approx(targeted["cpu_seconds"] / plain["cpu_seconds"])
    assert plain["cpu_seconds"] > 0 and targeted["cpu_seconds"] > 0
    phases = report["during+target_phase_seconds"]
    assert {"target_epoch1", "target_epoch2"} <= set(phases)
    assert not any(k.startswith("target_") for k in report["during_phase_seconds"])
    assert overhead["target_pass_seconds"] == pytest.approx(
        phases["target_epoch1"] + phases["target_epoch2"])
    assert 0 < overhead["target_pass_seconds"] < targeted["seconds"]
    assert "during+target / during (2 target examples, 20% of the pool)" in result.stdout


@pytest.mark.parametrize(("extra", "message"), [
    (["--paths", "during+target"], "--paths during+target need --target-examples"),
    (["--paths", "during", "--target-examples", "TARGET"], "name one in --paths"),
    (["--paths", "during,fast"], "unknown path(s) ['fast']"),
])
def test_bench_speed_refuses_paths_that_do_not_match_the_target(tmp_path, cli, extra, message):
    data = write_json(tmp_path / "a.json", alpaca_records(4))
    target = write_json(tmp_path / "t.json", alpaca_records(2))
    extra = [str(target) if arg == "TARGET" else arg for arg in extra]
    code, _, err = cli("bench", "speed", data, "--proxy", tmp_path / "no-model", *extra)
    assert code != 0 and message in err, err
    assert "Traceback" not in err


def test_rank_agreement():
    from gradfilter.bench.speed import rank_agreement

    x = np.arange(20.0)
    assert rank_agreement(x, 2 * x + 1) == {"spearman": 1.0, "top_overlap": 1.0}
    reverse = rank_agreement(x, -x)
    assert reverse["spearman"] == -1.0 and reverse["top_overlap"] == 0.0
    swapped = x.copy()
    swapped[[19, 0]] = swapped[[0, 19]]  # the top one leaves the top 2
    assert rank_agreement(x, swapped)["top_overlap"] == 0.5
