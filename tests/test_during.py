"""`--collect during`: the statistics come from the training passes of epochs s and t, and each
is exactly the example's own loss and squared LoRA-gradient norm at the parameters it met."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import alpaca_records, sharegpt_records, write_json
from test_gradnorms import _reference as peft_reference

import gradfilter as gf
from gradfilter.data.dataset import read_dataset
from gradfilter.scoring import trainer as trainer_module
from gradfilter.scoring.collection import train_and_collect
from gradfilter.scoring.ensemble import LoRAEnsemble
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.tokenization import encode, resolve_template

MEMBERS, RANK, ALPHA = 2, 4, 8.0


def _encoded(tmp_path, proxy: str, arch: str):
    records = alpaca_records(10) if arch == "gpt2" else sharegpt_records(10)
    dataset = read_dataset(write_json(tmp_path / "d.json", records))
    tokenizer = load_tokenizer(proxy)
    template = resolve_template(tokenizer, "auto")
    return [encode(dataset.turns(r), tokenizer, template, 512) for r in dataset.records]


def _reference(proxy: str, member_params: dict[str, torch.Tensor], targets,
               encoded) -> tuple[np.ndarray, np.ndarray]:
    """PEFT with the given adapter; HF's own loss and one backward() per example
    (test_gradnorms' reference, on a one-member ensemble holding it)."""
    holder = LoRAEnsemble(load_model(proxy, torch.device("cpu")), 1, RANK, ALPHA, targets, 0)
    holder.load_member_states({0: {"params": member_params}})
    losses, sqnorms = peft_reference(proxy, holder, 0, encoded)
    return losses.numpy(), sqnorms.numpy()


def _train_watching_recorded_steps(monkeypatch, ensemble, encoded, config):
    """train_and_collect, and for every recording step: (step, rows per member, the adapters
    just before it)."""
    met: list[tuple[int, list[np.ndarray], dict]] = []
    original = trainer_module.Trainer._step

    def watched(self, rows, parts, size, record):
        if record:
            met.append((self.step, [r.copy() for r in rows], self.ensemble.member_states()))
        return original(self, rows, parts, size, record)

    monkeypatch.setattr(trainer_module.Trainer, "_step", watched)
    stats = train_and_collect(ensemble, encoded, np.arange(len(encoded)), config,
                              torch.device("cpu"), torch.float32, progress=False)
    return stats, met


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_during_norms_equal_one_backward_per_example_at_the_parameters_met(
        tmp_path, monkeypatch, gpt2_proxy, llama_proxy, arch):
    """Every recorded (epoch, example, member) value against PEFT at the adapter the example
    met: the parameters saved just before the step that trained on it. Batch 4 over 10
    examples (a short last step), micro-batches of one row per member (budget 1), so the
    1/rows rescaling and the accumulation are both exercised. rtol 1e-4 for the squared
    norms (as for the collection pass: float32 sums in another order than PEFT's, over
    ~10^3 terms) and 1e-5 for the losses (one mean of float32 cross-entropies)."""
    proxy = gpt2_proxy if arch == "gpt2" else llama_proxy
    encoded = _encoded(tmp_path, proxy, arch)
    model = load_model(proxy, torch.device("cpu"))
    targets = default_targets(model)
    config = gf.ScoreConfig(proxy=proxy, members=MEMBERS, lora_rank=RANK, lora_alpha=ALPHA,
                            lr=5e-2, batch_size=4, seed=2, device="cpu", batch_tokens=1,
                            collect="during").with_targets(targets)
    ensemble = LoRAEnsemble(model, MEMBERS, RANK, ALPHA, targets, config.seed)
    stats, met = _train_watching_recorded_steps(monkeypatch, ensemble, encoded, config)
    assert not any(key.startswith("collect_") for key in stats.phase_seconds)  # no extra pass
    steps_per_epoch = 3
    assert [step for step, _, _ in met] == [0, 1, 2, 3, 4, 5]  # epochs 1 and 2 recorded
    checked = 0
    for step, rows, states in met:
        epoch = step // steps_per_epoch + 1
        for m in range(MEMBERS):
            items = [encoded[i] for i in rows[m]]
            losses, sqnorms = _reference(proxy, states[m]["params"], targets, items)
            np.testing.assert_allclose(stats.losses[epoch][rows[m], m], losses, rtol=1e-5)
            np.testing.assert_allclose(stats.sqnorms[epoch][rows[m], m], sqnorms, rtol=1e-4)
            checked += len(items)
    assert checked == 2 * MEMBERS * len(encoded)
    assert (stats.sqnorms[1] > 0).all() and not np.allclose(stats.sqnorms[1], stats.sqnorms[2])


def test_during_is_its_own_setting_and_deterministic(tmp_path, gpt2_proxy):
    """`collect` is recorded in the table's metadata and changes the numbers; the same seed
    gives the same table bit for bit; member 0 of 3 equals a one-member run (rtol 1e-4, the
    member-independence tolerance of tests/test_scoring.py)."""
    data = write_json(tmp_path / "d.json", alpaca_records(14))

    def run(name: str, **overrides):
        settings = dict(proxy=gpt2_proxy, members=3, lora_rank=4, lr=5e-3, batch_size=4,
                        seed=11, device="cpu", collect="during")
        return gf.score(data, tmp_path / f"{name}.parquet",
                        gf.ScoreConfig(**{**settings, **overrides}), progress=False)

    first, again = run("a"), run("b")
    columns = [c for c in first.column_names if c.startswith(("loss_", "sqnorm_"))]
    assert first.select(columns).equals(again.select(columns))
    meta = json.loads(first.schema.metadata[b"gradfilter"])
    assert meta["config"]["collect"] == "during"
    snapshot = run("s", collect="snapshot")
    assert not np.allclose(snapshot.column("sqnorm_e1_m0").to_numpy(),
                           first.column("sqnorm_e1_m0").to_numpy(), rtol=1e-3)
    one = run("one", members=1)
    for column in ("loss_e1_m0", "sqnorm_e1_m0", "loss_e2_m0", "sqnorm_e2_m0"):
        np.testing.assert_allclose(one.column(column).to_numpy(),
                                   first.column(column).to_numpy(), rtol=1e-4, err_msg=column)


def test_during_sketches_equal_one_example_sketches_at_the_parameters_met(
        tmp_path, monkeypatch, gpt2_proxy):
    """With `collect=during` the sketch of each (epoch, example, member) is that of the
    example's own gradient at the adapter it met: the rescaled rows of accumulated
    micro-batches (budget 1 and batch 4) against a one-example, unscaled backward of a
    one-member ensemble holding that adapter (the kernel tests/test_sketches.py checks against
    the explicit projection of PEFT's gradient)."""
    from test_sketches import _sketched

    encoded = _encoded(tmp_path, gpt2_proxy, "gpt2")
    model = load_model(gpt2_proxy, torch.device("cpu"))
    targets = default_targets(model)
    config = gf.ScoreConfig(proxy=gpt2_proxy, members=MEMBERS, lora_rank=RANK,
                            lora_alpha=ALPHA, lr=5e-2, batch_size=4, seed=2, device="cpu",
                            batch_tokens=1, collect="during", sketch_dim=16
                            ).with_targets(targets)
    ensemble = LoRAEnsemble(model, MEMBERS, RANK, ALPHA, targets, config.seed)
    stats, met = _train_watching_recorded_steps(monkeypatch, ensemble, encoded, config)
    holder = LoRAEnsemble(load_model(gpt2_proxy, torch.device("cpu")), 1, RANK, ALPHA, targets,
                          0)
    projection = holder.sketch_projection(16, config.seed)
    for step, rows, states in met:
        epoch = step // 3 + 1
        for m in range(MEMBERS):
            holder.load_member_states({0: {"params": states[m]["params"]}})
            for i in rows[m]:
                expected, _ = _sketched(holder, encoded, [int(i)], projection)
                got = torch.from_numpy(stats.sketches[epoch][i, m])
                torch.testing.assert_close(got, expected[0, 0], rtol=0,
                                           atol=1e-4 * float(expected.norm()))
