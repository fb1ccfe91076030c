"""The safety net of refactoring: two small statistics tables pinned by value.

The proxies' weights come from a seeded numpy draw (not from transformers' own initialisation,
which may change between releases), so the pinned numbers depend on gradfilter's code and on
float32 arithmetic only. The tolerance (rtol 1e-5) admits a CPU whose BLAS sums in another
order (an ulp per operation); any change of behaviour (an order, a seed, a mask) moves these
numbers by far more. On the development machine the tables were also compared byte for byte
before and after each refactor (`sha256` below is of that machine's float64 bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import alpaca_records, sharegpt_records, write_json
from tiny import make_proxy

import gradfilter as gf

PINNED = Path(__file__).parent / "data" / "pinned_tables.json"
CASES = {
    "gpt2-plain-alpaca": ("gpt2", False, alpaca_records(10)),
    "llama-chat-sharegpt": ("llama", True, sharegpt_records(8)),
}


def seeded_proxy(directory: Path, arch: str, chat: bool) -> str:
    """A tiny proxy whose every weight is drawn by numpy from a fixed seed."""
    import torch
    from transformers import AutoModelForCausalLM

    path = make_proxy(directory, arch, chat=chat)
    model = AutoModelForCausalLM.from_pretrained(path)
    rng = np.random.default_rng(1234)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            values = rng.normal(0.0, 0.05, tuple(parameter.shape)).astype(np.float32)
            parameter.copy_(torch.from_numpy(values))
    model.save_pretrained(path)
    return path


IDENTITY = ("record_id", "record_hash")  # which record each row is (pinned as text)


def table_values(table) -> dict[str, list[float]]:
    """Every numeric column but the sketches (lists), as float64 lists."""
    names = [c for c in table.column_names
             if c not in ("index", "truncated", "skip_reason", *IDENTITY)
             and not c.startswith("sketch")]
    return {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False), np.float64).tolist()
            for c in names}


def values_sha256(values: dict[str, list[float]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(values):
        digest.update(name.encode())
        digest.update(np.asarray(values[name], np.float64).tobytes())
    return digest.hexdigest()


def score_case(tmp_path: Path, name: str, sketch_dim: int = 0):
    arch, chat, records = CASES[name]
    proxy = seeded_proxy(tmp_path / f"proxy-{name}", arch, chat)
    data = write_json(tmp_path / f"{name}.json", records)
    config = gf.ScoreConfig(proxy=proxy, members=2, lora_rank=4, lr=5e-3, batch_size=4,
                            collect_batch_size=3, seed=5, device="cpu", sketch_dim=sketch_dim,
                            collect="snapshot")  # the tables were pinned in snapshot mode
    return gf.score(data, tmp_path / f"{name}.parquet", config, progress=False)


@pytest.mark.parametrize("sketch_dim", [0, 16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_table_equals_the_pinned_one(tmp_path, name, sketch_dim):
    """Sketches off: the very table pinned. On: the same columns and values, and sketches."""
    pinned = json.loads(PINNED.read_text())[name]
    table = score_case(tmp_path, name, sketch_dim)
    sketches = [c for c in table.column_names if c.startswith("sketch")]
    assert len(sketches) == (2 * 2 * 2 if sketch_dim else 0)  # 2 epochs x 2 members x 2
    values = table_values(table)
    assert set(pinned["columns"]) <= set(values)  # columns added later are not pinned
    for column, expected in pinned["columns"].items():
        np.testing.assert_allclose(values[column], expected, rtol=1e-5, atol=1e-12,
                                   err_msg=column)
    assert table_identity(table) == {k: pinned[k] for k in (*IDENTITY, "data_fingerprint")}


def table_identity(table) -> dict:
    """The records' IDs and content hashes and the data's fingerprint (data.identity)."""
    from gradfilter.table import table_meta

    return {**{c: table.column(c).to_pylist() for c in IDENTITY},
            "data_fingerprint": table_meta(table)["data_fingerprint"]}


if __name__ == "__main__":  # python tests/test_pinned_table.py: print (or --write) the pins
    import sys
    import tempfile

    found = {}
    with tempfile.TemporaryDirectory() as scratch:
        for case in sorted(CASES):
            table = score_case(Path(scratch), case)
            values = table_values(table)
            found[case] = {"sha256": values_sha256(values), "columns": values,
                           **table_identity(table)}
            print(case, found[case]["sha256"])
    if "--write" in sys.argv:
        PINNED.write_text(json.dumps(found, indent=1) + "\n")
