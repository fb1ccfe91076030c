"""`bench finetune`: equal compute for every subset, paired intervals, reuse, usable adapters."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, cli_process, write_jsonl

import gradfilter as gf
from gradfilter.bench.finetune import (
    Curves,
    FinetuneConfig,
    inputs_from_noise,
    paired_difference,
    run_finetune_benchmark,
    steps_to_reach,
)
from gradfilter.bench.noise import run_noise_benchmark


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory, gpt2_proxy):
    out = tmp_path_factory.mktemp("noise")
    data = write_jsonl(out / "d.jsonl", alpaca_records(60))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64, members=2,
                            lora_rank=2, batch_size=8)
    run_noise_benchmark(data, out, config, methods=["random", "length", "loss"],
                        corruptions=["swap", "echo"], fraction=0.2, budgets=[0.2],
                        resamples=100, progress=False, log=lambda _: None)
    return out


def _benchmark(noise_dir, out, gpt2_proxy, **overrides):
    target = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64)
    inputs = inputs_from_noise(noise_dir, None, target, None, 0.2, seed=0)
    config = FinetuneConfig(**{"steps": 6, "batch_size": 4, "lr": 5e-3, "lora_rank": 2,
                               "eval_every": 2, "seeds": (0, 1), **overrides})
    logs: list[str] = []
    results = run_finetune_benchmark(inputs, out, target, config, [0.2], progress=False,
                                     log=logs.append)
    return inputs, results, logs


def test_a_noise_run_directory_can_be_moved_whole(noise_dir, gpt2_proxy, tmp_path, monkeypatch):
    recorded = json.loads((noise_dir / "results.json").read_text())["seeds"]["0"]["tables"]
    assert all(path.startswith("scores/") for path in recorded.values())
    moved = tmp_path / "elsewhere" / "noise"
    shutil.copytree(noise_dir, moved)
    monkeypatch.chdir(tmp_path)
    target = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64)
    there, here = (inputs_from_noise(run, None, target, None, 0.2, seed=0)
                   for run in (noise_dir, moved))
    assert here.scores.keys() == there.scores.keys() == recorded.keys()
    for method in recorded:
        np.testing.assert_array_equal(here.scores[method], there.scores[method])


def test_every_subset_gets_the_same_steps_and_a_clean_held_out_set(noise_dir, gpt2_proxy,
                                                                   tmp_path):
    inputs, results, _ = _benchmark(noise_dir, tmp_path / "ft", gpt2_proxy)
    labels = pq.read_table(noise_dir / "labels-s0.parquet")["corruption"].to_pylist()
    table = gf.load_stats(noise_dir / json.loads((noise_dir / "results.json").read_text())
                          ["seeds"]["0"]["tables"]["loss"])
    scorable = table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
    clean = np.array([label is None for label in labels])
    held = round(0.2 * int((scorable & clean).sum()))
    assert results["records"] == {"pool": 60, "usable": int(scorable.sum()) - held,
                                  "held_out": held}
    taken = np.flatnonzero(~inputs.usable & scorable)
    assert len(taken) == held and clean[taken].all()  # clean references only
    table = results["results"]["0.2"]
    assert set(table) == {"random", "length", "loss", "full"}
    usable = results["records"]["usable"]
    assert table["random"]["records"] == table["loss"]["records"] == round(0.2 * usable)
    assert table["full"]["records"] == usable
    for name, curve in results["curves"].items():
        assert len(curve["train_loss_mean"]) == 6 and curve["eval_steps"] == [0, 2, 4, 6], name
    # Every seed starts from the same adapter (B = 0: the untouched target), whatever the data.
    starts = {name: c["eval_loss_mean"][0] for name, c in results["curves"].items()}
    assert len({round(v, 10) for v in starts.values()}) == 1
    # The subset is the method's top share of the selectable records.
    positions = np.flatnonzero(inputs.usable)
    kept = gf.select_top(inputs.scores["loss"][positions], ratio=0.2).indices
    assert len(kept) == table["loss"]["records"]
    assert (tmp_path / "ft" / "heldout.png").stat().st_size > 0
    assert "## Budget 20%" in (tmp_path / "ft" / "results.md").read_text()


def test_a_rerun_reuses_every_run_and_reports_the_same(noise_dir, gpt2_proxy, tmp_path):
    _, first, _ = _benchmark(noise_dir, tmp_path / "ft", gpt2_proxy)
    _, again, logs = _benchmark(noise_dir, tmp_path / "ft", gpt2_proxy)
    assert sum("reusing" in line for line in logs) == 4
    assert again == first


def test_saved_adapters_reproduce_the_final_held_out_losses(noise_dir, gpt2_proxy, tmp_path):
    import torch
    from peft import PeftModel

    from gradfilter.scoring.batching import Batcher
    from gradfilter.scoring.ensemble import per_example_losses
    from gradfilter.scoring.proxy import load_model

    inputs, _, _ = _benchmark(noise_dir, tmp_path / "ft", gpt2_proxy)
    run = next((tmp_path / "ft" / "runs").glob("loss@0.2-*.json"))
    final = np.array(json.loads(run.read_text())["eval_loss"])[-1]  # [seeds, examples]
    base = load_model(gpt2_proxy, torch.device("cpu"))
    model = PeftModel.from_pretrained(base, tmp_path / "ft" / "adapters" / "loss-0.2" / "seed1")
    batch = Batcher(inputs.held_out, torch.device("cpu")).batch([range(len(inputs.held_out))])
    with torch.no_grad():
        losses = per_example_losses(model.get_base_model(), batch.input_ids,
                                    batch.attention_mask, batch.response_mask, batch.targets)
    np.testing.assert_allclose(losses.numpy(), final[1], rtol=1e-4)


def test_paired_difference_and_convergence_on_made_up_curves():
    steps = [0, 5, 10]
    # [points, seeds, examples]; b ends at 2.0 everywhere, a at 1.5 and reaches 2.0 at step 5
    a = Curves(np.zeros((2, 10)), steps, np.stack([np.full((2, 4), v) for v in (3, 2, 1.5)]), 1)
    b = Curves(np.zeros((2, 10)), steps, np.stack([np.full((2, 4), v) for v in (3, 2.5, 2)]), 1)
    d = paired_difference(a, b)
    assert d.estimate == pytest.approx(-0.5) and d.high < 0
    assert steps_to_reach(a, 2.0) == 5 and steps_to_reach(b, 1.0) == np.inf


def test_cli_from_a_noise_benchmark(noise_dir, gpt2_proxy, tmp_path):
    result = cli_process("bench", "finetune", "--from-noise", str(noise_dir), "--out-dir",
                         str(tmp_path / "ft"), "--budgets", "0.2", "--seeds", "0",
                         "--steps", "3", "--batch-size", "4", "--eval-every", "3",
                         "--lora-rank", "2", "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "| random |" in result.stdout
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["target"]["proxy"] == gpt2_proxy and results["target"]["max_length"] == 64
    bad = cli_process("bench", "finetune", "--out-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "give POOL" in bad.stderr


def test_dedup_subsets_have_no_near_duplicates_and_compare_with_plain_top_k(tmp_path,
                                                                           gpt2_proxy):
    """--dedup gsnr: the same budget, no two kept records at or above the cosine threshold (by
    the G-SNR table's sketches, checked pair by pair), and its difference to plain top-k."""
    from gradfilter.bench.finetune import DEDUP
    from gradfilter.table import load_sketch_features

    noise = tmp_path / "noise"
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(40))
    config = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64, members=2,
                            lora_rank=2, batch_size=8, sketch_dim=16)
    run_noise_benchmark(data, noise, config, methods=["gsnr", "random"],
                        corruptions=["near_duplicate", "echo"], fraction=0.3, budgets=[0.3],
                        resamples=100, progress=False, log=lambda _: None)
    target = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64)
    inputs = inputs_from_noise(noise, None, target, None, 0.2, seed=0)
    results = run_finetune_benchmark(
        inputs, tmp_path / "ft", target,
        FinetuneConfig(steps=2, batch_size=4, lr=5e-3, lora_rank=2, eval_every=1, seeds=(0,)),
        [0.3], progress=False, log=lambda _: None, dedup_methods=["gsnr"], dedup_threshold=0.5)
    table = results["results"]["0.3"]
    assert table[f"gsnr{DEDUP}"]["records"] == table["gsnr"]["records"]
    assert "final_vs_plain" in table[f"gsnr{DEDUP}"] and "final_vs_plain" not in table["gsnr"]
    kept = np.array(results["subsets"][f"gsnr{DEDUP}@0.3"])
    assert set(kept) != set(results["subsets"]["gsnr@0.3"])  # 0.5 is low enough to remove some
    features = load_sketch_features(inputs.sketches, kept).astype(np.float64)
    cosines = features @ features.T  # the mean over members of the sketches' cosines
    assert (cosines[np.triu_indices(len(kept), 1)] < 0.5).all()
    assert "final - plain top-k" in (tmp_path / "ft" / "results.md").read_text()
