"""Selecting for a target (score --target-examples): the alignment utilities on hand-made
tables, the target gradients and alignments against one backward() per example, and the
pool's statistics untouched by the target pass."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import alpaca_records, cli_process, sharegpt_records, write_json, write_jsonl
from peft import PeftModel

import gradfilter as gf
from gradfilter.alignment import alignments, target_direction
from gradfilter.scoring.ensemble import LoRAEnsemble
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.score import tokenize
from gradfilter.table import table_meta
from gradfilter.utilities import EPS, TARGET_UTILITIES

# --- the utilities on hand-made tables -------------------------------------------------------

# [records, members]: agreed and aligned; members disagreeing (mean 0); a spread around 0.5;
# zero gradients (cosine 0); unscored.
ALIGN_EARLY = np.array([[0.5, 0.5], [0.8, -0.8], [0.7, 0.3], [0.0, 0.0], [np.nan, np.nan]])
ALIGN_LATE = np.array([[0.5, 0.5], [0.8, -0.8], [0.5, 0.5], [0.0, 0.0], [np.nan, np.nan]])
ALIGN_MAX = np.array([[0.9, 0.7], [0.9, 0.1], [0.6, 0.6], [0.0, 0.0], [np.nan, np.nan]])


def _target_table() -> pa.Table:
    columns = {"index": pa.array(np.arange(5))}
    for epoch, align in ((1, ALIGN_EARLY), (2, ALIGN_LATE)):
        for m in range(2):
            columns[f"sqnorm_e{epoch}_m{m}"] = pa.array(np.where(np.isnan(align[:, m]),
                                                                 np.nan, 1.0 + m))
            columns[f"align_e{epoch}_m{m}"] = pa.array(align[:, m])
            columns[f"alignmax_e{epoch}_m{m}"] = pa.array(ALIGN_MAX[:, m])
    return pa.table(columns)


def test_align_utilities_by_hand():
    table = _target_table()
    align = gf.utility_scores(table, "align")
    np.testing.assert_allclose(align[:4], [0.5, 0.0, 0.5, 0.0])
    snr = gf.utility_scores(table, "align-snr")
    # agreed: 0.5 over no spread; disagreeing: 0 whatever the spread; member means 0.6 and
    # 0.4: 0.5 / 0.1; zero gradients: 0
    np.testing.assert_allclose(snr[:4], [0.5 / EPS, 0.0, 5.0, 0.0], rtol=1e-9)
    np.testing.assert_allclose(gf.utility_scores(table, "align-max")[:4], [0.8, 0.5, 0.6, 0.0])
    for utility in TARGET_UTILITIES:
        assert np.isnan(gf.utility_scores(table, utility)[4])
    # ranked: agreed first by align-snr; align ties the agreed and the spread record
    assert gf.select_top(snr, count=2).indices.tolist()[0] == 0
    stored = gf.with_utilities(table)
    for utility in TARGET_UTILITIES:
        np.testing.assert_array_equal(gf.utility_scores(stored, utility),
                                      gf.utility_scores(table, utility))


def test_align_utilities_read_batch_by_batch(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from gradfilter import table as table_contract
    from gradfilter.table import load_scores

    monkeypatch.setattr(table_contract, "_STATS_BATCH_ROWS", 2)
    table = _target_table()
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    for utility in TARGET_UTILITIES:
        np.testing.assert_array_equal(load_scores(tmp_path / "t.parquet", utility),
                                      gf.utility_scores(table, utility))
    assert gf.select_top(load_scores(tmp_path / "t.parquet", "align"), count=5).indices.tolist(
        )[:2] in ([0, 2], [2, 0])


def test_a_table_without_a_target_offers_no_alignment():
    table = _target_table().drop_columns(
        [c for c in _target_table().column_names if c.startswith("align")])
    assert "align" not in gf.with_utilities(table).column_names
    with pytest.raises(gf.GradfilterError, match="no utility 'align-snr'"):
        gf.utility_scores(table, "align-snr")


def test_alignments_by_hand():
    # [records 3, members 2, dim 2]; targets [2, 2, 2]
    pool = np.array([[[1, 0], [0, 2]], [[0, 0], [1, 1]], [[-3, 0], [0, -1]]], dtype=np.float32)
    targets = np.array([[[1, 1], [0, 1]], [[1, -1], [0, 3]]], dtype=np.float32)
    np.testing.assert_allclose(target_direction(targets), [[1, 0], [0, 2]])
    mean, largest = alignments(pool, targets)
    np.testing.assert_allclose(mean, [[1, 1], [0, np.sqrt(0.5)], [-1, -1]])
    half = np.sqrt(0.5)
    np.testing.assert_allclose(largest, [[half, 1], [0, half], [-half, -1]])
    # one target example: the direction is that example, the mean and the max agree
    one_mean, one_max = alignments(pool, targets[:1])
    np.testing.assert_allclose(one_mean, one_max)
    # target gradients that cancel (or vanish): no direction, every alignment 0
    cancelled, _ = alignments(pool, np.stack([targets[0], -targets[0]]))
    np.testing.assert_array_equal(cancelled, 0)


# --- end to end on tiny models, against one backward() per example ---------------------------

POOL, TARGET, DIM = 7, 3, 16


def _config(proxy: str, **overrides) -> gf.ScoreConfig:
    settings = dict(proxy=proxy, members=2, lora_rank=2, lora_alpha=4.0, lr=2e-2,
                    batch_size=3, collect_batch_size=4, seed=5, device="cpu",
                    collect="snapshot", sketch_dim=DIM, ifd_pass=False, max_length=128)
    settings.update(overrides)
    return gf.ScoreConfig(**settings)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("target")
    pool = write_json(directory / "pool.json", alpaca_records(POOL))
    target = write_jsonl(directory / "target.jsonl", sharegpt_records(TARGET))
    return pool, target


def _reference_sketches(proxy: str, config: gf.ScoreConfig, adapters, encoded) -> np.ndarray:
    """[examples, members, dim]: each example's LoRA gradient from its own backward() through
    PEFT with the saved adapter, projected by explicit dense matrices of the seeded projection."""
    model = load_model(proxy, torch.device("cpu"))
    shapes = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                          default_targets(model), config.seed)
    projection = shapes.sketch_projection(config.sketch_dim, config.seed)
    out = np.zeros((len(encoded), config.members, config.sketch_dim))
    for m in range(config.members):
        peft = PeftModel.from_pretrained(load_model(proxy, torch.device("cpu")),
                                         str(adapters / f"member{m}"), is_trainable=True)
        peft.eval()
        params = dict(peft.named_parameters())
        for i, item in enumerate(encoded):
            ids = torch.from_numpy(item.input_ids)[None]
            labels = ids.clone()
            labels[0, ~torch.from_numpy(item.response_mask)] = -100
            peft.zero_grad(set_to_none=True)
            peft(input_ids=ids, labels=labels).loss.backward()
            total = torch.zeros(config.sketch_dim, dtype=torch.float64)
            for name, blocks in projection.blocks.items():
                for part, block in zip("AB", blocks, strict=True):
                    grad = params[f"base_model.model.{name}.lora_{part}.default.weight"].grad
                    total += block.dense().double() @ grad.double().flatten()
            out[i, m] = total.numpy()
    return out


def _encoded(proxy: str, path, config: gf.ScoreConfig):
    return tokenize(gf.read_dataset(path), load_tokenizer(proxy), config, False).encoded


@pytest.mark.parametrize(("arch", "collect"), [("gpt2", "snapshot"), ("llama", "during")])
def test_target_gradients_and_alignment_equal_one_backward_per_example(
        arch, collect, tmp_path, files, gpt2_proxy, llama_proxy):
    proxy = gpt2_proxy if arch == "gpt2" else llama_proxy
    pool, target = files
    config = _config(proxy, collect=collect)
    table = gf.score(pool, tmp_path / "t.parquet", config, progress=False,
                     save_adapters=tmp_path / "adapters", target_examples=target)
    meta = table_meta(table)["target"]
    record = json.loads((tmp_path / "t.parquet.run.json").read_text())["target"]
    assert record["records"] == record["used"] == TARGET and record["data_sha256"]
    assert meta["data_sha256"] == record["data_sha256"]
    target_encoded = _encoded(proxy, target, config)
    pool_encoded = _encoded(proxy, pool, config)
    for epoch in (1, 2):
        adapters = tmp_path / "adapters" / f"epoch{epoch}"
        expected_targets = _reference_sketches(proxy, config, adapters, target_encoded)
        direction = np.array(meta["direction"][str(epoch)])  # [members, dim]
        scale = np.abs(expected_targets).max()
        np.testing.assert_allclose(direction, expected_targets.mean(axis=0), rtol=0,
                                   atol=1e-5 * scale)
        if collect == "snapshot":  # the pool's sketches at the same adapters: all exact
            expected_mean, expected_max = alignments(
                _reference_sketches(proxy, config, adapters, pool_encoded), expected_targets)
        else:  # the states each record met: checked against its stored (float16) sketch
            units = np.stack([np.array(table[f"sketch_e{epoch}_m{m}"].to_pylist(), float)
                              for m in range(config.members)], axis=1)
            expected_mean, expected_max = alignments(units, expected_targets)
        tolerance = 1e-4 if collect == "snapshot" else 2e-3
        for m in range(config.members):
            np.testing.assert_allclose(table[f"align_e{epoch}_m{m}"].to_numpy(),
                                       expected_mean[:, m], rtol=0, atol=tolerance)
            np.testing.assert_allclose(table[f"alignmax_e{epoch}_m{m}"].to_numpy(),
                                       expected_max[:, m], rtol=0, atol=tolerance)
    assert np.isfinite(gf.utility_scores(table, "align-snr")).all()


def test_without_target_examples_the_table_is_unchanged(tmp_path, files, gpt2_proxy):
    pool, target = files
    config = _config(gpt2_proxy, collect="during")
    plain = gf.score(pool, tmp_path / "plain.parquet", config, progress=False)
    targeted = gf.score(pool, tmp_path / "targeted.parquet", config, progress=False,
                        target_examples=target)
    added = [c for c in targeted.column_names if c not in plain.column_names]
    assert sorted(added) == sorted(
        [*(u.replace("-", "_") for u in TARGET_UTILITIES),
         *(f"{s}_e{e}_m{m}" for s in ("align", "alignmax") for e in (1, 2) for m in (0, 1))])
    meta = table_meta(targeted)
    assert meta.pop("target")["used"] == TARGET
    assert meta == table_meta(plain)
    assert not any(c.startswith("align") for c in plain.column_names)
    assert "target" not in table_meta(plain)
    assert targeted.drop_columns(added).replace_schema_metadata(plain.schema.metadata).equals(
        plain)
    assert "target" not in json.loads((tmp_path / "plain.parquet.run.json").read_text())


def test_a_resumed_run_redoes_the_target_pass_from_the_kept_adapters(tmp_path, files,
                                                                      gpt2_proxy):
    pool, target = files
    config = _config(gpt2_proxy, collect="during")
    first = gf.score(pool, tmp_path / "a.parquet", config, progress=False,
                     checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1,
                     target_examples=target)
    # the directory is finished: nothing is trained again, the target pass runs on the
    # end-of-epoch adapters read back from it
    again = gf.score(pool, tmp_path / "b.parquet", config, progress=False,
                     checkpoint_dir=tmp_path / "ckpt", target_examples=target)
    assert again.equals(first)
    assert "train_epoch1" not in json.loads(
        (tmp_path / "b.parquet.run.json").read_text())["wall_seconds"]


def test_run_selects_for_the_target_and_refuses_what_cannot_work(tmp_path, files, gpt2_proxy):
    pool, target = files
    tiny = ["--proxy", gpt2_proxy, "--members", "2", "--lora-rank", "2", "--batch-size", "4",
            "--device", "cpu", "--no-ifd-pass", "--sketch-dim", "8", "--threads", "1",
            "--quiet", "--max-length", "128"]
    out = tmp_path / "subset.json"
    result = cli_process("run", str(pool), "--target-examples", str(target), "--count", "3",
                         "--out", str(out), "--no-report", *tiny)
    assert result.returncode == 0, result.stderr
    assert "by align" in result.stdout
    table = gf.load_stats(tmp_path / "subset.json.stats.parquet")
    expected = gf.select_top(gf.utility_scores(table, "align"), count=3).in_order("input")
    assert json.loads(out.read_text()) == [alpaca_records(POOL)[i] for i in expected]
    record = json.loads((tmp_path / "subset.json.stats.parquet.run.json").read_text())
    assert record["target"]["data"] == str(target) and record["target"]["used"] == TARGET
    for extra, message in ((["--sketch-dim", "0"], "needs gradient sketches"),
                           (["--method", "length"], "is for --method gsnr")):
        bad = tmp_path / "bad.parquet"
        result = cli_process("score", str(pool), "--target-examples", str(target),
                             "--out", str(bad), *tiny, *extra)
        assert result.returncode != 0 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not bad.exists()
    result = cli_process("score", str(pool), "--target-examples", str(pool), "--out",
                         str(pool), *tiny)
    assert result.returncode != 0 and "refusing to write over an input" in result.stderr


# --- the noise benchmark with a target ----------------------------------------------------


def test_noise_benchmark_scores_its_gsnr_run_with_the_target(tmp_path, files, gpt2_proxy):
    from gradfilter.bench.corruptions import SHIPPED
    from gradfilter.bench.noise import run_noise_benchmark, scores_path

    _, target = files
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_records(16))
    config = _config(gpt2_proxy, sketch_dim=8, collect="during")
    common = dict(corruptions=list(SHIPPED)[:2], fraction=0.25, budgets=[0.25], progress=False,
                  log=lambda _: None)
    with pytest.raises(gf.GradfilterError, match="need --target-examples"):
        run_noise_benchmark(data, tmp_path / "none", config, methods=["align", "length"],
                            **common)
    results = run_noise_benchmark(data, tmp_path / "bench", config,
                                  methods=["align-snr", "align", "length"],
                                  target_examples=target, **common)
    run = results["seeds"]["0"]
    assert 0 <= run["methods"]["align-snr"]["auroc"]["estimate"] <= 1
    table = gf.load_stats(tmp_path / "bench" / run["tables"]["align"])
    assert table_meta(table)["target"]["used"] == TARGET
    assert scores_path(tmp_path, "gsnr", config, "d") != scores_path(tmp_path, "gsnr", config,
                                                                      "d", "t")
