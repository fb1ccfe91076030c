"""RDS+ (score --method ifd --target-examples): the position-weighted pooling against one
forward per example, the round robin against the round robin itself, hand-made cases, the IFD
columns untouched, the table selectable by `rds` without torch, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import alpaca_records, cli_process, sharegpt_records, write_json, write_jsonl

import gradfilter as gf
from gradfilter.alignment import rds_scores, round_robin_slots
from gradfilter.scoring.baselines import forward_pass
from gradfilter.scoring.prefix import PrefixCache, shared_prefix_length
from gradfilter.scoring.proxy import load_model, load_tokenizer
from gradfilter.scoring.representations import position_weighted_means
from gradfilter.scoring.score import tokenize
from gradfilter.scoring.tokenization import Encoded
from gradfilter.table import default_utility, table_meta
from gradfilter.utilities import RDS_SCORES

# --- the round robin and the scores, by hand ---------------------------------------------------


def _round_robin(cosines: np.ndarray, k: int) -> list[int]:
    """RDS+'s selection as its authors' code runs it: each target in turn pops its most
    similar record left in its own list; a record taken already is not taken again."""
    lists = [list(np.argsort(-cosines[:, t], kind="stable")) for t in range(cosines.shape[1])]
    taken: list[int] = []
    while len(taken) < k:
        for ranked in lists:
            record = int(ranked.pop(0))
            if record not in taken:
                taken.append(record)
            if len(taken) == k:
                break
    return taken


def test_the_slots_order_records_as_the_round_robin_takes_them():
    rng = np.random.default_rng(3)
    for records, targets in ((30, 4), (12, 1), (9, 9)):
        cosines = rng.uniform(-1, 1, (records, targets)).round(1)  # rounded: many ties
        slots = round_robin_slots(cosines)
        assert len(set(slots.tolist())) == records  # one slot a record
        order = np.argsort(slots, kind="stable").tolist()
        assert order == _round_robin(cosines, records)
        top = gf.select_top(rds_scores(cosines)["rds"], count=records // 2).indices.tolist()
        assert top == _round_robin(cosines, records // 2)


def test_rds_by_hand():
    # 4 records, 2 targets: target 0 likes record 2 then 0; target 1 likes record 1 then 0
    cosines = np.array([[0.8, 0.7], [0.1, 0.9], [0.9, -0.2], [0.0, 0.0]])
    scores = rds_scores(cosines)
    # round 0: target 0 takes 2 (slot 0), target 1 takes 1 (slot 1); round 1: both rank
    # record 0 second, target 0 takes it (slot 2); round 2: target 0's third is record 1,
    # taken already (slot 4 stays empty), target 1's third is record 3 (slot 5)
    np.testing.assert_array_equal(scores["rds"], [-2, -1, 0, -5])
    np.testing.assert_allclose(scores["rds_mean"], [0.75, 0.5, 0.35, 0.0])
    # one target: the round robin is the cosine's own order
    one = rds_scores(cosines[:, :1])
    assert np.argsort(-one["rds"]).tolist() == np.argsort(-cosines[:, 0]).tolist()
    with pytest.raises(ValueError, match="at least one target"):
        rds_scores(np.zeros((3, 0)))


def test_the_position_weights():
    """w_i = 2i / (L (L + 1)) over each row's own L tokens, padding ignored; with a prefix of
    P tokens the row's tokens are at positions P+1.., and the prefix's share is added."""
    width, size = 5, 7
    hidden = torch.eye(size)[:width].repeat(2, 1, 1)  # token j's hidden state: unit vector j
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pooled = position_weighted_means(hidden, mask)
    np.testing.assert_allclose(pooled[0, :width], np.arange(1, 6) / 15, rtol=1e-6)
    np.testing.assert_allclose(pooled[1, :3], np.arange(1, 4) / 6, rtol=1e-6)
    assert pooled[1, 3:].abs().max() == 0
    # a prefix of 2 tokens whose hidden states are unit vectors 5 and 6
    prefix = PrefixCache(2, None, "cache", position_sum=1.0 * torch.eye(size)[5]
                         + 2.0 * torch.eye(size)[6])
    pooled = position_weighted_means(hidden, mask, prefix)
    total = np.array([7 * 8 / 2, 5 * 6 / 2])
    np.testing.assert_allclose(pooled[:, 5], 1 / total, rtol=1e-6)
    np.testing.assert_allclose(pooled[:, 6], 2 / total, rtol=1e-6)
    np.testing.assert_allclose(pooled[0, :width], np.arange(3, 8) / 28, rtol=1e-6)
    np.testing.assert_allclose(pooled[1, :3], np.arange(3, 6) / 15, rtol=1e-6)


# --- the pooled representation against one forward per example --------------------------------


def _item(ids: list[int], response_from: int) -> Encoded:
    mask = np.zeros(len(ids), dtype=bool)
    mask[response_from:] = True
    return Encoded(np.array(ids, dtype=np.int64), mask, truncated=False)


def _brute_force(model, item: Encoded) -> np.ndarray:
    """One forward of the whole example; the weights written out."""
    with torch.no_grad():
        states = model(input_ids=torch.from_numpy(item.input_ids)[None],
                       output_hidden_states=True).hidden_states[-1][0].double().numpy()
    weights = np.arange(1, len(states) + 1, dtype=np.float64)
    return (weights[:, None] * states).sum(axis=0) / weights.sum()


@pytest.mark.parametrize("proxy", ["gpt2_proxy", "llama_proxy"])
@pytest.mark.parametrize("batch_tokens", [10_000, 40])
def test_pooling_equals_one_forward_per_example(request, proxy, batch_tokens):
    """Batched longest first, padded, cut into micro-batches, the shared prefix run once (or
    not): each example's representation is its own forward's, and the losses are unchanged."""
    model = load_model(request.getfixturevalue(proxy), torch.device("cpu")).eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1)
    head = rng.integers(5, vocab, 11).tolist()
    items = []
    for k in range(7):
        prompt = rng.integers(5, vocab, 1 + k % 3).tolist()
        answer = rng.integers(5, vocab, 2 + (3 * k) % 8).tolist()
        items.append(_item(head + prompt + answer, len(head) + len(prompt)))
    assert shared_prefix_length(items) == len(head)
    expected = np.stack([_brute_force(model, item) for item in items])
    plain, _ = forward_pass(model, items, 3, torch.device("cpu"), torch.float32, batch_tokens)
    for share in (True, False):
        nll, pooled = forward_pass(model, items, 3, torch.device("cpu"), torch.float32,
                                   batch_tokens, share_prefix=share,
                                   represent=lambda rows: rows)
        np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-5)
        if share:  # the same forward as without representations: the very same losses
            np.testing.assert_array_equal(nll, plain)
        else:
            np.testing.assert_allclose(nll, plain, rtol=1e-5)


# --- end to end on a tiny GPT-2 --------------------------------------------------------------

POOL = 8


def _config(proxy: str) -> gf.ScoreConfig:
    return gf.ScoreConfig(proxy=proxy, device="cpu", max_length=128, collect_batch_size=3)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, gpt2_proxy):
    """The pool scored by IFD alone and with target examples (two ShareGPT conversations)."""
    directory = tmp_path_factory.mktemp("rds")
    pool = write_json(directory / "pool.json", alpaca_records(POOL))
    target = write_jsonl(directory / "target.jsonl", sharegpt_records(2))
    plain = gf.score(pool, directory / "ifd.parquet", _config(gpt2_proxy), method="ifd",
                     progress=False)
    targeted = gf.score(pool, directory / "rds.parquet", _config(gpt2_proxy), method="ifd",
                        progress=False, target_examples=target)
    return directory, pool, target, plain, targeted


def _representations(proxy: str, path) -> np.ndarray:
    config = _config(proxy)
    tokens = tokenize(gf.read_dataset(path), load_tokenizer(proxy), config, False)
    model = load_model(proxy, torch.device("cpu")).eval()
    return np.stack([_brute_force(model, tokens.encoded[i]) for i in tokens.scorable])


def _units(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_the_ifd_columns_are_unchanged_and_rds_is_the_pools_cosine_with_the_target(
        scored, gpt2_proxy):
    directory, pool, target, plain, targeted = scored
    added = [c for c in targeted.column_names if c not in plain.column_names]
    assert added == ["rds", "rds_mean"]
    assert targeted.drop_columns(added).replace_schema_metadata(plain.schema.metadata).equals(
        plain)
    meta, plain_meta = table_meta(targeted), table_meta(plain)
    target_meta = meta.pop("target")
    assert meta.pop("utility") == "rds" and plain_meta.pop("utility") == "ifd"
    assert set(meta.pop("directions")) == {*plain_meta.pop("directions"), *RDS_SCORES}
    assert meta == plain_meta
    assert target_meta["used"] == 2 and target_meta["data_sha256"]
    representations = target_meta["representations"]
    assert representations["examples"] == 2 and representations["hidden_size"] == 32
    record = json.loads((directory / "rds.parquet.run.json").read_text())
    assert record["target"] == target_meta
    # the cosines, against one forward per example
    cosines = _units(_representations(gpt2_proxy, pool)) @ _units(
        _representations(gpt2_proxy, target)).T
    np.testing.assert_allclose(targeted["rds_mean"].to_numpy(), cosines.mean(axis=1),
                               atol=1e-5)
    stored = targeted["rds"].to_numpy()
    assert sorted(stored.tolist(), reverse=True)[0] == 0
    assert default_utility(targeted) == "rds"
    np.testing.assert_array_equal(gf.utility_scores(targeted, "rds"), stored)


def test_a_record_identical_to_the_one_target_example_scores_one_and_ranks_first(
        tmp_path, gpt2_proxy):
    records = alpaca_records(POOL)
    pool = write_json(tmp_path / "pool.json", records)
    target = write_json(tmp_path / "target.json", [records[5]])
    table = gf.score(pool, tmp_path / "t.parquet", _config(gpt2_proxy), method="ifd",
                     progress=False, target_examples=target)
    mean = table["rds_mean"].to_numpy()
    assert mean[5] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.delete(mean, 5) < mean[5])
    rds = gf.utility_scores(table, "rds")
    assert gf.select_top(rds, count=1).indices.tolist() == [5]
    # one target example: the round robin keeps the cosine's order
    assert gf.select_top(rds, count=POOL).indices.tolist() == np.argsort(
        -mean, kind="stable").tolist()


def test_select_by_rds_from_the_file_without_torch_and_the_refusals(scored, tmp_path,
                                                                     gpt2_proxy):
    directory, pool, target, _, targeted = scored
    out = tmp_path / "subset.json"
    script = (
        "import sys, gradfilter as gf\n"
        f"s = gf.select({str(pool)!r}, {str(directory / 'rds.parquet')!r}, "
        f"{str(out)!r}, count=3)\n"
        "assert 'torch' not in sys.modules, 'selection imported torch'\n"
        "print(s.utility)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rds"
    expected = gf.select_top(targeted["rds"].to_numpy(), count=3).in_order("input")
    assert json.loads(out.read_text()) == [alpaca_records(POOL)[i] for i in expected]
    # a table scored without target examples has no rds: one line, nothing written
    bad = tmp_path / "bad.json"
    result = cli_process("select", str(pool), "--stats", str(directory / "ifd.parquet"),
                         "--utility", "rds", "--count", "3", "--out", str(bad))
    assert result.returncode != 0 and "no utility 'rds'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not bad.exists()
    # methods that cannot use target examples refuse them, in one line
    tiny = ["--proxy", gpt2_proxy, "--device", "cpu", "--quiet", "--max-length", "128"]
    for method in ("length", "perplexity-low"):
        bad = tmp_path / f"{method}.parquet"
        result = cli_process("score", str(pool), "--method", method, "--target-examples",
                             str(target), "--out", str(bad), *tiny)
        assert result.returncode != 0 and "is for --method gsnr" in result.stderr
        assert "or ifd (RDS+" in result.stderr and method in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not bad.exists()


def test_run_selects_by_rds(tmp_path, gpt2_proxy, scored):
    _, pool, target, _, targeted = scored
    out = tmp_path / "subset.json"
    result = cli_process("run", str(pool), "--method", "ifd", "--target-examples", str(target),
                         "--count", "3", "--out", str(out), "--no-report", "--proxy",
                         gpt2_proxy, "--device", "cpu", "--quiet", "--max-length", "128",
                         "--collect-batch-size", "3", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "by rds" in result.stdout
    table = gf.load_stats(tmp_path / "subset.json.stats.parquet")
    np.testing.assert_allclose(table["rds_mean"].to_numpy(), targeted["rds_mean"].to_numpy(),
                               atol=1e-6)
    expected = gf.select_top(gf.utility_scores(table, "rds"), count=3).in_order("input")
    assert json.loads(out.read_text()) == [alpaca_records(POOL)[i] for i in expected]


# --- the benchmarks -------------------------------------------------------------------------


def test_the_noise_benchmark_measures_rds_from_its_ifd_run(tmp_path, gpt2_proxy, scored):
    from gradfilter.bench.corruptions import SHIPPED
    from gradfilter.bench.noise import method_groups, run_noise_benchmark

    _, _, target, _, _ = scored
    assert method_groups(["rds", "perplexity-low", "length"]) == {
        "ifd": ["rds", "perplexity-low"], "length": ["length"]}
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(16))
    common = dict(corruptions=list(SHIPPED)[:2], fraction=0.25, budgets=[0.25], progress=False,
                  log=lambda _: None)
    config = _config(gpt2_proxy)
    with pytest.raises(gf.GradfilterError, match="rds need --target-examples"):
        run_noise_benchmark(data, tmp_path / "none", config, methods=["rds", "length"],
                            **common)
    results = run_noise_benchmark(data, tmp_path / "bench", config,
                                  methods=["rds", "rds-mean", "ifd", "length"],
                                  target_examples=target, **common)
    run = results["seeds"]["0"]
    for method in ("rds", "rds-mean", "ifd"):
        assert 0 <= run["methods"][method]["auroc"]["estimate"] <= 1
    assert run["tables"]["rds"] == run["tables"]["ifd"]
    table = gf.load_stats(tmp_path / "bench" / run["tables"]["rds"])
    assert table_meta(table)["target"]["used"] == 2
    cost = run["cost"]  # RDS+ costs the IFD run that served it, its forward over the target too
    scored = table["skip_reason"].is_null().to_numpy(zero_copy_only=False)
    tokens = table["n_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)[scored]
    response = table["n_response_tokens"].to_numpy(zero_copy_only=False).astype(np.int64)[scored]
    ifd = int(tokens.sum() + response.sum() + len(tokens))  # T + R + N
    ifd += table_meta(table)["target"]["tokens"]  # U, the target examples read forward
    assert cost["runs"]["ifd"]["forward_row_tokens"] == ifd
    for method in ("rds", "rds-mean", "ifd"):
        assert cost["methods"][method]["run"] == "ifd"
        assert cost["methods"][method]["selection_row_tokens"] == ifd


def test_the_finetune_benchmark_reads_rds_from_an_ifd_table(scored, gpt2_proxy):
    from gradfilter.bench.finetune_inputs import inputs_from_pool

    directory, pool, _, _, targeted = scored
    path = str(directory / "rds.parquet")
    inputs = inputs_from_pool(str(pool), {"rds": path, "ifd": path, "targeted": path},
                              _config(gpt2_proxy), None, 0.25, seed=0)
    np.testing.assert_array_equal(inputs.scores["rds"], targeted["rds"].to_numpy())
    np.testing.assert_array_equal(inputs.scores["targeted"], targeted["rds"].to_numpy())
    np.testing.assert_array_equal(inputs.scores["ifd"], targeted["ifd"].to_numpy())
    # its cost beside the fine-tunes: IFD's forward pass, as ifd's
    from gradfilter.bench.costs import selection_row_tokens

    assert selection_row_tokens("rds", {"ifd_forward_row_tokens": 123}) == 123
    assert selection_row_tokens("rds-mean", {"ifd_forward_row_tokens": 123}) == 123


def test_the_selection_cost_counts_the_target_pass(scored, gpt2_proxy):
    """RDS+ costs IFD's passes and one forward over the target examples; a G-SNR run with
    target examples, each member's gradient pass over them after epochs s and t."""
    from gradfilter.bench.costs import selection_cost, table_work, work_from

    directory, _, target, _, _ = scored
    tokens = tokenize(gf.read_dataset(target), load_tokenizer(gpt2_proxy), _config(gpt2_proxy),
                      False)
    used = sum(len(tokens.encoded[i].input_ids) for i in tokens.scorable)
    counts, response = np.array([100, 50]), np.array([30, 20])
    plain = selection_cost(table_work(directory / "ifd.parquet"), counts, response)
    targeted = selection_cost(table_work(directory / "rds.parquet"), counts, response)
    assert plain["forward_row_tokens"] == 150 + 50 + 2
    assert targeted["forward_row_tokens"] == plain["forward_row_tokens"] + used
    meta = {"method": "gsnr", "config": {"members": 3, "epochs": 2, "ifd_pass": False}}
    base = selection_cost(work_from(meta, None, "t"), counts, response)
    with_target = selection_cost(work_from({**meta, "target": {"tokens": 40}}, None, "t"),
                                 counts, response)
    assert with_target["forward_backward_row_tokens"] == (
        base["forward_backward_row_tokens"] + 3 * 2 * 40)
