"""`bench finetune`: the same steps for every run at a budget (epochs over the subset), the
untrained model in every table, the AUC and final readings with paired intervals, random over
reselections, the overfitting flag, seeds by value, a held-out split by conversation, reuse and
usable adapters."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import alpaca_records, cli_process, write_jsonl

import gradfilter as gf
from gradfilter.bench.finetune import (
    FinetuneConfig,
    FinetuneInputs,
    inputs_from_noise,
    inputs_from_pool,
    record_groups,
    run_finetune_benchmark,
    split_by_group,
)
from gradfilter.bench.finetune_measures import (
    Curves,
    budget_results,
    convergence,
    difference,
    read,
    stacked,
)
from gradfilter.bench.noise import run_noise_benchmark
from gradfilter.data.exchanges import conversation_ids


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny models gain nothing from two, and on a shared machine a
    second thread waiting for a busy core makes every step several times slower."""
    import torch

    from gradfilter.threads import use_threads

    before = torch.get_num_threads()
    use_threads(1)
    yield
    torch.set_num_threads(before)


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
    inputs = inputs_from_noise(noise_dir, ["loss", "random"], target, None, 0.2, seed=0)
    config = FinetuneConfig(**{"epochs": 2, "batch_size": 4, "lr": 5e-3, "lora_rank": 2,
                               "eval_every": 2, "seeds": (0, 1), **overrides})
    logs: list[str] = []
    results = run_finetune_benchmark(inputs, out, target, config, [0.2], progress=False,
                                     log=logs.append)
    return inputs, results, logs


@pytest.fixture(scope="module")
def finished(noise_dir, gpt2_proxy, tmp_path_factory):
    """One benchmark: `loss`, random's 3 draws and the full pool, 2 seeds, 2 epochs."""
    out = tmp_path_factory.mktemp("finetune") / "ft"
    inputs, results, _ = _benchmark(noise_dir, out, gpt2_proxy)
    return out, inputs, results


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


def test_every_run_at_a_budget_gets_the_same_steps_and_a_clean_held_out_set(noise_dir,
                                                                           finished):
    out, inputs, results = finished
    labels = pq.read_table(noise_dir / "labels-s0.parquet")["corruption"].to_pylist()
    table = gf.load_stats(noise_dir / json.loads((noise_dir / "results.json").read_text())
                          ["seeds"]["0"]["tables"]["loss"])
    scorable = table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
    clean = np.array([label is None for label in labels])
    held = round(0.2 * int((scorable & clean).sum()))
    assert results["records"] == {"pool": 60, "usable": int(scorable.sum()) - held,
                                  "held_out": held}
    taken = np.array(results["held_out_records"])
    assert len(taken) == held and clean[taken].all() and not inputs.usable[taken].any()
    table = results["results"]["0.2"]
    assert list(table) == ["untrained", "loss", "random", "full"]
    usable = results["records"]["usable"]
    size = round(0.2 * usable)
    assert table["random"]["records"] == table["loss"]["records"] == size
    assert table["full"]["records"] == usable
    # 2 epochs over the budget's subset, for every run at the budget (the full pool included)
    steps = -(-2 * size // 4)
    schedule = results["schedule"]["0.2"]
    assert schedule["steps"] == steps and schedule["subset_passes"] == steps * 4 / size
    assert table["loss"]["passes"] == steps * 4 / size
    assert table["full"]["passes"] == steps * 4 / usable
    expected = sorted({*range(0, steps, 2), steps})
    for name, curve in results["curves"].items():
        assert len(curve["train_loss_mean"]) == steps and curve["eval_steps"] == expected, name
    assert {name for name in results["curves"]} == {
        "loss@0.2", "random-draw0@0.2", "random-draw1@0.2", "random-draw2@0.2", "full@0.2"}
    # Every run starts from the untrained target (B = 0), whatever its data and seed, and
    # the untrained row is that step-0 loss.
    starts = {name: c["eval_loss_mean"][0] for name, c in results["curves"].items()}
    assert len({round(v, 10) for v in starts.values()}) == 1
    assert table["untrained"]["final"]["estimate"] == pytest.approx(next(iter(starts.values())))
    assert results["mean_curves"]["0.2"]["untrained"][0] == pytest.approx(
        table["untrained"]["final"]["estimate"])
    # Random's draws are different subsets of the same size; the method's is its top share.
    draws = [set(results["subsets"][f"random-draw{r}@0.2"]) for r in range(3)]
    assert all(len(d) == size for d in draws) and len({frozenset(d) for d in draws}) == 3
    positions = np.flatnonzero(inputs.usable)
    kept = gf.select_top(inputs.scores["loss"][positions], ratio=0.2).indices
    assert sorted(positions[kept]) == results["subsets"]["loss@0.2"]
    assert not list(out.glob("*.png"))  # the curves are the page's, no loose images
    report = (out / "results.md").read_text()
    assert "## Budget 20%" in report and "| untrained (step 0) |" in report
    assert "each subset record seen" in report and "Random's 3 draws" in report


def test_auc_and_final_are_read_from_the_curves_and_the_verdict_is_the_declared_one(finished):
    _, _, results = finished
    table, curves = results["results"]["0.2"], results["curves"]
    loss = curves["loss@0.2"]["eval_loss_mean"]
    assert table["loss"]["auc"]["estimate"] == pytest.approx(np.mean(loss[1:]))
    assert table["loss"]["final"]["estimate"] == pytest.approx(loss[-1])
    random = [curves[f"random-draw{r}@0.2"]["eval_loss_mean"] for r in range(3)]
    assert table["random"]["auc"]["estimate"] == pytest.approx(np.mean([r[1:] for r in random]))
    assert table["random"]["draw_spread"]["auc"]["per_draw"] == pytest.approx(
        [np.mean(r[1:]) for r in random])
    assert table["random"]["draw_spread"]["final"]["sd"] == pytest.approx(
        np.std([r[-1] for r in random], ddof=1))
    for name in ("loss", "full"):
        e = table[name]
        assert e["auc_vs_random"]["estimate"] == pytest.approx(
            e["auc"]["estimate"] - table["random"]["auc"]["estimate"])
        for reading in ("auc", "final"):
            diff = e[f"{reading}_vs_random"]
            expected = ("better" if diff["high"] < 0 else "worse" if diff["low"] > 0
                        else "tied")
            assert e["vs_random"][reading] == expected
        assert e["vs_random"]["declared"] == results["reading"]["declared"] == "auc"
    assert "Verdict against random (AUC; final beside it)" in results_md(finished)
    page = (finished[0] / "report.html").read_text()
    shown = page[page.index('<table id="finetune-verdicts">'):]
    for name in ("loss", "full"):  # the page's verdicts are results.json's
        e = table[name]
        assert (f"<tr><td>20%</td><td>{name}</td><td>{e['vs_random']['auc']}</td>"
                in shown), name
        assert f"<td>{e['vs_random']['final']}</td>" in shown


def results_md(finished) -> str:
    return (finished[0] / "results.md").read_text()


def test_a_rerun_reuses_every_run_and_reports_the_same(noise_dir, gpt2_proxy, finished):
    out, _, first = finished
    _, again, logs = _benchmark(noise_dir, out, gpt2_proxy)
    assert sum("reusing 2 finished seed run(s)" in line for line in logs) == 5
    assert not any("fine-tuning" in line for line in logs)
    assert again == first


def test_seeds_are_seeds(noise_dir, gpt2_proxy, finished, tmp_path):
    """A run follows its seed's value: `--seeds 1` alone is seed 1 of `--seeds 0,1`, number
    for number, and a one-seed run extends to more seeds by reusing it."""
    out, _, both = finished
    _, alone, _ = _benchmark(noise_dir, tmp_path / "one", gpt2_proxy, seeds=(1,))
    assert alone["run_seeds"] == {"1": both["run_seeds"]["1"]}
    runs = sorted(p.name for p in (tmp_path / "one" / "runs").iterdir())
    assert len(runs) == 5 and all("-s1-" in name for name in runs)
    for name in runs:
        here = json.loads((tmp_path / "one" / "runs" / name).read_text())
        there = json.loads((out / "runs" / name).read_text())
        assert here["eval_loss"] == there["eval_loss"], name
        assert here["train_loss"] == there["train_loss"], name
    _, extended, logs = _benchmark(noise_dir, tmp_path / "one", gpt2_proxy, seeds=(1, 0))
    assert sum("reusing 1 finished seed run(s)" in line for line in logs) == 5
    np.testing.assert_allclose(
        extended["curves"]["loss@0.2"]["eval_loss_mean"], both["curves"]["loss@0.2"]
        ["eval_loss_mean"], rtol=1e-12)


def test_saved_adapters_reproduce_the_final_held_out_losses(finished, gpt2_proxy):
    import torch
    from peft import PeftModel

    from gradfilter.scoring.batching import Batcher
    from gradfilter.scoring.ensemble import per_example_losses
    from gradfilter.scoring.proxy import load_model

    out, inputs, _ = finished
    run = next((out / "runs").glob("loss@0.2-s1-*.json"))
    final = np.array(json.loads(run.read_text())["eval_loss"])[-1]  # [examples]
    base = load_model(gpt2_proxy, torch.device("cpu"))
    model = PeftModel.from_pretrained(base, out / "adapters" / "loss-0.2" / "seed1")
    batch = Batcher(inputs.held_out, torch.device("cpu")).batch([range(len(inputs.held_out))])
    with torch.no_grad():
        losses = per_example_losses(model.get_base_model(), batch.input_ids,
                                    batch.attention_mask, batch.response_mask, batch.targets)
    np.testing.assert_allclose(losses.numpy(), final, rtol=1e-4)


def test_every_runs_step_0_is_the_untrained_targets_held_out_loss(finished, gpt2_proxy):
    """Step 0 is computed once and reused (every run starts as the untrained target): it must
    be what the untrained target itself gives on the held-out set, for every run."""
    import torch

    from gradfilter.scoring.batching import Batcher
    from gradfilter.scoring.ensemble import per_example_losses
    from gradfilter.scoring.proxy import load_model

    out, inputs, _ = finished
    base = load_model(gpt2_proxy, torch.device("cpu"))
    batch = Batcher(inputs.held_out, torch.device("cpu")).batch([range(len(inputs.held_out))])
    with torch.no_grad():
        untrained = per_example_losses(base, batch.input_ids, batch.attention_mask,
                                       batch.response_mask, batch.targets).double().numpy()
    runs = list((out / "runs").glob("*.json"))
    assert len(runs) == 10
    for run in runs:
        np.testing.assert_allclose(json.loads(run.read_text())["eval_loss"][0], untrained,
                                   rtol=1e-5, err_msg=run.name)


def _curves(points: list[list[float]], noise: float = 0.01, seed: int = 0) -> Curves:
    """Made-up curves: [seeds][points] mean losses, spread over 6 held-out examples."""
    rng = np.random.default_rng(seed)
    means = np.array(points, dtype=float).T  # [points, seeds]
    losses = means[:, :, None] + noise * rng.standard_normal((*means.shape, 6))
    losses[0] = means[0, 0]  # step 0: the untrained model, the same for every run
    return Curves(np.zeros((means.shape[1], 35)), [0, 7, 14, 21, 28, 35], losses, 1.0)


def test_the_issues_overfitting_curves_are_flagged_and_steps_to_random_are_not_defined():
    """The curves issue 37 measured (ShareGPT, 35 steps at lr 1e-3, 10% subsets): every subset
    ends above the untrained model; the full pool keeps falling."""
    untrained = 1.945
    rows = {
        "default": [_curves([[untrained, 1.837, 1.895, 1.943, 2.030, 2.063]] * 3)],
        "random": [_curves([[untrained, 1.844, 1.907, 2.015, 2.163, 2.233]] * 3, seed=r)
                   for r in range(3)],
        "full": [_curves([[untrained, 1.798, 1.786, 1.744, 1.731, 1.733]] * 3)],
    }
    table, schedule = budget_results(rows, {"default": 28, "random": 28, "full": 276}, 35, 8)
    for name in ("default", "random"):
        flag = table[name]["overfitting"]
        assert flag["flagged"] and flag["words"].startswith(
            "overfits: ends above the untrained model"), name
        assert flag["best_step"] == 7
        assert table[name]["steps_to_random_final"]["defined"] is False
        assert "not below the untrained model" in table[name]["steps_to_random_final"]["why"]
    assert not table["full"]["overfitting"]["flagged"] and table["full"]["overfitting"]["learned"]
    assert schedule["every_subset_overfits"] and not schedule["full_pool_overfits"]
    assert "every subset's held-out loss rises" in schedule["warnings"][0]
    # Read at the end, the default "beats" random: the issue's misleading verdict, now marked
    # as no result.
    assert table["default"]["vs_random"]["final"] == "better"
    assert table["default"]["vs_random"]["readable"] is False
    assert table["default"]["final_vs_random"]["estimate"] == pytest.approx(-0.170, abs=0.01)
    assert table["default"]["auc_vs_random"]["estimate"] == pytest.approx(
        np.mean([1.837, 1.895, 1.943, 2.030, 2.063]) - np.mean([1.844, 1.907, 2.015, 2.163,
                                                                2.233]), abs=0.01)
    assert table["untrained"]["passes"] == 0 and table["full"]["passes"] == 35 * 8 / 276


def test_steps_to_reach_random_and_verdicts_on_falling_made_up_curves():
    a = _curves([[3, 2, 1.5, 1.5, 1.5, 1.5]] * 2)
    b = _curves([[3, 2.5, 2.2, 2.1, 2.05, 2.0]] * 2)
    la, lb = stacked([a]), stacked([b])
    d = difference(read(la, "final"), read(lb, "final"))
    assert d.estimate == pytest.approx(-0.5, abs=0.02) and d.high < 0
    reached = convergence(la, lb, a.eval_steps, True, 35)
    assert reached["defined"] and reached["steps"] == 7 and reached["why"] is None
    never = convergence(lb, la, a.eval_steps, True, 35)
    assert never["defined"] and never["steps"] is None
    assert never["why"] == "not reached in 35 steps"
    table, schedule = budget_results({"a": [a], "random": [b, b, b]},
                                     {"a": 10, "random": 10}, 35, 8)
    assert table["a"]["vs_random"] == {"declared": "auc", "auc": "better", "final": "better",
                                       "readable": True}
    assert not schedule["every_subset_overfits"] and schedule["warnings"] == []


def test_a_setting_that_overfits_is_flagged_in_a_real_run(gpt2_proxy, tmp_path):
    """A tiny target fully fine-tuned hard on answers of six words, measured on answers of six
    others: after a first fall every run ends above the untrained model; the benchmark says so
    in words, warns that every subset overfits, and leaves steps to random's final undefined."""
    rng = np.random.default_rng(0)
    trained, measured = ["cat", "dog", "mat", "sun", "tree", "42"], ["code", "sleep", "eat",
                                                                     "diet", "well", "café"]
    records = [{"instruction": f"Say {i}", "input": "",
                "output": " ".join(rng.choice(trained if i < 32 else measured, 12))}
               for i in range(40)]
    data = write_jsonl(tmp_path / "words.jsonl", records)
    target = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64)
    from gradfilter.scoring.proxy import load_tokenizer
    from gradfilter.scoring.score import tokenize

    tokens = tokenize(gf.read_dataset(data), load_tokenizer(gpt2_proxy), target, True)
    usable = np.arange(40) < 32
    inputs = FinetuneInputs(tokens.encoded, tokens.encoded[32:], {"length": np.arange(40.0)},
                            usable, {"data": str(data)}, "words")
    config = FinetuneConfig(steps=24, batch_size=4, lr=0.01, eval_every=4, seeds=(0,),
                            full_finetune=True)
    logs: list[str] = []
    results = run_finetune_benchmark(inputs, tmp_path / "ft", target, config, [0.25],
                                     progress=False, log=logs.append)
    table = results["results"]["0.25"]
    for name in ("length", "full"):
        assert table[name]["overfitting"]["flagged"], name
        assert "overfits: ends above the untrained model" in table[name]["overfitting"]["words"]
        assert table[name]["steps_to_random_final"]["defined"] is False
    assert table["random"]["overfitting"]["flagged"]
    schedule = results["schedule"]["0.25"]
    assert schedule["every_subset_overfits"] and schedule["full_pool_overfits"]
    assert any("--steps 24 overrides the epoch budget" in line for line in logs)
    assert any("every subset's held-out loss rises" in line for line in logs)
    report = (tmp_path / "ft" / "results.md").read_text()
    assert "overfits: ends above the untrained model" in report
    assert "not defined (random does not end below the untrained model)" in report
    assert "not a result: every subset overfits at this budget" in report


def test_the_held_out_split_never_straddles_a_group():
    rng = np.random.default_rng(0)
    groups = [f"c{g}" if g % 5 else None for g in rng.integers(0, 40, 300)]
    candidates = np.flatnonzero(rng.random(300) < 0.8)
    for seed in range(20):
        taken = set(split_by_group(candidates, groups, 0.1, seed).tolist())
        assert taken <= set(candidates.tolist())
        assert len(taken) >= round(0.1 * len(candidates))
        for group in {g for g in groups if g is not None}:
            members = {i for i in candidates if groups[i] == group}
            assert members <= taken or not members & taken, (seed, group)
    # without groups: a seeded share of the records, as before groups existed
    plain = split_by_group(candidates, None, 0.1, 3)
    from gradfilter.seeds import HELD_OUT_STREAM, derived_seed
    old = np.sort(np.random.default_rng(derived_seed(3, HELD_OUT_STREAM))
                  .permutation(candidates)[:round(0.1 * len(candidates))])
    np.testing.assert_array_equal(plain, old)


def test_conversation_ids_join_chunks_and_exchanges_of_a_conversation():
    assert conversation_ids(["a_0#1", "a_1#3", "a_2#1", "b_0#1", "x#2", None]) == [
        "a", "a", "a", "b", "x", None]
    # numbered ids with no `_0` are records of their own (ContinuationRule's reading)
    assert conversation_ids(["item_1", "item_2", 7]) == ["item_1", "item_2", "7"]


def test_a_pool_split_by_conversation_leaves_no_chunk_of_a_held_out_conversation_selectable(
        tmp_path, gpt2_proxy):
    """Exchange pools (source `<id>_<n>#<turn>`, as sharegpt_pairs.py writes them) are split by
    conversation; every other record of a held-out conversation leaves the pool."""
    records = alpaca_records(48)
    for i, record in enumerate(records):
        record["source"] = f"conv{i // 4}_{i % 2}#{1 + i % 4 // 2}"
    data = write_jsonl(tmp_path / "pool.jsonl", records)
    target = gf.ScoreConfig(proxy=gpt2_proxy, device="cpu", max_length=64)
    gf.score(data, tmp_path / "length.parquet", target, method="length", progress=False)
    inputs = inputs_from_pool(str(data), {"length": str(tmp_path / "length.parquet")}, target,
                              None, 0.2, seed=1)
    held = set(inputs.held_out_records)
    assert len(held) >= round(0.2 * 48) and len(inputs.held_out) == len(held)
    scorable = {i for i in range(48) if inputs.pool[i].n_response_tokens > 0}
    for c in range(12):
        members = set(range(4 * c, 4 * c + 4))
        if members & held:  # the whole conversation (what of it can be scored) is held out
            assert members & scorable == members & held, c
            assert not inputs.usable[sorted(members)].any(), c
    assert "split by conversation (field 'source', 12 conversations)" in \
        inputs.source["groups"]
    # an explicit field every record must carry
    found = record_groups(gf.read_dataset(data).records, "instruction", "pool.jsonl")
    assert found.field == "instruction" and len(set(found.ids)) == 48
    with pytest.raises(gf.GradfilterError, match=r"pool.jsonl: record 0 has no 'thread' field"):
        record_groups(gf.read_dataset(data).records, "thread", "pool.jsonl")
    # ids numbered task_0, task_1, ... are not one conversation's chunks
    numbered = write_jsonl(tmp_path / "numbered.jsonl",
                           [{"id": f"task_{i}", **r} for i, r in enumerate(alpaca_records(30))])
    found = record_groups(gf.read_dataset(numbered).records, None, "numbered.jsonl")
    assert found.ids is None and "put 30 of 30 records in one" in found.note


def test_cli_from_a_noise_benchmark(noise_dir, gpt2_proxy, tmp_path):
    result = cli_process("bench", "finetune", "--from-noise", str(noise_dir), "--out-dir",
                         str(tmp_path / "ft"), "--budgets", "0.2", "--seeds", "0",
                         "--methods", "length,random", "--steps", "3", "--batch-size", "4",
                         "--eval-every", "3", "--lora-rank", "2", "--device", "cpu",
                         "--threads", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "| random |" in result.stdout and "| untrained (step 0) |" in result.stdout
    assert "--steps 3 overrides the epoch budget" in result.stdout
    results = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert results["target"]["proxy"] == gpt2_proxy and results["target"]["max_length"] == 64
    assert results["threads"] == 1 and results["finetune"]["steps"] == 3
    record = json.loads((tmp_path / "ft" / "results.json.run.json").read_text())
    assert record["threads"] == 1 and record["run_seeds"] == results["run_seeds"]
    bad = cli_process("bench", "finetune", "--out-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "give POOL" in bad.stderr
    few = cli_process("bench", "finetune", "--from-noise", str(noise_dir), "--out-dir",
                      str(tmp_path / "y"), "--random-draws", "2")
    assert few.returncode == 2 and "--random-draws" in few.stderr
    assert not (tmp_path / "y").exists()


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
    assert "auc_vs_plain" in table[f"gsnr{DEDUP}"] and "auc_vs_plain" not in table["gsnr"]
    kept = np.array(results["subsets"][f"gsnr{DEDUP}@0.3"])
    assert set(kept) != set(results["subsets"]["gsnr@0.3"])  # 0.5 is low enough to remove some
    features = load_sketch_features(inputs.sketches, kept).astype(np.float64)
    cosines = features @ features.T  # the mean over members of the sketches' cosines
    assert (cosines[np.triu_indices(len(kept), 1)] < 0.5).all()
    assert "AUC - plain top-k" in (tmp_path / "ft" / "results.md").read_text()
