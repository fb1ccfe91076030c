"""Gradient sketches from one batched backward equal the explicit projection of the gradient
of one backward() per example, whatever the batch and whoever shares it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from test_gradnorms import ALPHA, CONVERSATIONS, MEMBERS, RANK, _ensemble

from gradfilter.scoring.batching import Batcher
from gradfilter.scoring.ensemble import LoRAEnsemble, RowGradRecorder, per_example_losses
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.sketch import SketchProjection, split_dim
from gradfilter.scoring.tokenization import encode, resolve_template

DIM = 24  # not a power of two: exercises the split of dim between the two factors


def _encoded(proxy: str):
    tokenizer = load_tokenizer(proxy)
    template = resolve_template(tokenizer, "auto")
    return [encode(turns, tokenizer, template, 512) for turns in CONVERSATIONS]


def _sketched(ensemble: LoRAEnsemble, encoded, rows: list[int], projection: SketchProjection,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sketches and squared norms of `rows` for every member the ensemble holds, from one
    batched backward: [members, rows, dim] and [members, rows]."""
    batch = Batcher(encoded, torch.device("cpu")).batch([rows] * ensemble.members)
    recorder = RowGradRecorder(batch.input_ids.shape[0], batch.input_ids.device, projection)
    ensemble.set_recorder(recorder)
    losses = per_example_losses(ensemble.model, batch.input_ids, batch.attention_mask,
                                batch.response_mask, batch.targets)
    losses.sum().backward()
    ensemble.set_recorder(None)
    for p in ensemble.parameters():
        p.grad = None
    shape = (ensemble.members, len(rows))
    return recorder.sketches.reshape(*shape, -1), recorder.sqnorms.reshape(shape)


def _reference_gradients(proxy: str, ensemble: LoRAEnsemble, member: int, encoded):
    """PEFT with member m's adapter, one backward() per example: per example, each layer's
    (grad A, grad B) as PEFT holds them ([r, in] and [out, r])."""
    base = load_model(proxy, torch.device("cpu"))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                        target_modules=list(ensemble.targets),
                        fan_in_fan_out=ensemble.uses_conv1d)
    model = get_peft_model(base, config)
    set_peft_model_state_dict(model, ensemble.member_state(member))
    model.eval()
    params = dict(model.named_parameters())
    gradients = []
    for item in encoded:
        ids = torch.from_numpy(item.input_ids)[None]
        labels = ids.clone()
        labels[0, ~torch.from_numpy(item.response_mask)] = -100
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
        gradients.append({
            name: tuple(params[f"base_model.model.{name}.lora_{part}.default.weight"].grad.clone()
                        for part in ("A", "B"))
            for name in ensemble.layers})
    return gradients


def _explicit_sketch(projection: SketchProjection, gradient) -> torch.Tensor:
    """The projection built as explicit matrices: sum over blocks of P_block vec(block)."""
    total = torch.zeros(projection.dim, dtype=torch.float64)
    for name, blocks in projection.blocks.items():
        for block, grad in zip(blocks, gradient[name], strict=True):
            total += block.dense().double() @ grad.double().flatten()
    return total


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sketch_equals_the_projection_of_one_backward_per_example(arch, gpt2_proxy,
                                                                   llama_proxy):
    proxy = gpt2_proxy if arch == "gpt2" else llama_proxy
    encoded = _encoded(proxy)
    ensemble = _ensemble(proxy)
    projection = ensemble.sketch_projection(DIM, seed=11)
    sketches, _ = _sketched(ensemble, encoded, list(range(len(encoded))), projection)
    for member in range(MEMBERS):
        for i, gradient in enumerate(_reference_gradients(proxy, ensemble, member, encoded)):
            expected = _explicit_sketch(projection, gradient)
            # float32 sums over tokens and blocks against a float64 projection of float32
            # gradients: errors of a few ulps of the largest terms, far below 1e-4 of the norm
            scale = float(expected.norm())
            assert scale > 0
            torch.testing.assert_close(sketches[member, i].double(), expected,
                                       rtol=0, atol=1e-5 * scale)


def test_sketch_is_independent_of_batch_and_of_who_shares_it(gpt2_proxy):
    encoded = _encoded(gpt2_proxy)
    full = _ensemble(gpt2_proxy)
    projection = full.sketch_projection(DIM, seed=11)
    together, norms = _sketched(full, encoded, [0, 1, 2, 3], projection)
    # one row at a time (narrower padding), and members 2 and 0 alone, in that order
    pair = LoRAEnsemble(load_model(gpt2_proxy, torch.device("cpu")), MEMBERS, RANK, ALPHA,
                        default_targets(full.model), seed=3, member_ids=[2, 0])
    pair.load_member_states(full.member_states())
    pair_projection = pair.sketch_projection(DIM, seed=11)
    for i in range(len(encoded)):
        alone, alone_norms = _sketched(pair, encoded, [i], pair_projection)
        for k, m in enumerate([2, 0]):
            # the same row in other company: padding and row position only reorder float32
            # sums of zeros and equal terms, so a few ulps of the row's norm
            atol = 1e-6 * float(together[m, i].norm())
            torch.testing.assert_close(alone[k, 0], together[m, i], rtol=0, atol=atol)
            torch.testing.assert_close(alone_norms[k, 0], norms[m, i], rtol=1e-5, atol=0)


def test_projection_is_fixed_by_seed_and_shape():
    shapes = {"h.0.attn": (4, 32, 96), "h.0.mlp": (4, 128, 32)}
    cpu = torch.device("cpu")
    one, two = SketchProjection(128, 5, shapes, cpu), SketchProjection(128, 5, shapes, cpu)
    other_seed = SketchProjection(128, 6, shapes, cpu)
    fewer_layers = SketchProjection(128, 5, {"h.0.mlp": (4, 128, 32)}, cpu)
    for part in range(2):
        dense = one.blocks["h.0.mlp"][part].dense()
        assert torch.equal(dense, two.blocks["h.0.mlp"][part].dense())
        assert torch.equal(dense, fewer_layers.blocks["h.0.mlp"][part].dense())
        assert not torch.equal(dense, other_seed.blocks["h.0.mlp"][part].dense())
    assert not torch.equal(one.blocks["h.0.attn"][0].left, one.blocks["h.0.mlp"][0].left)
    assert one.metadata()["blocks"]["h.0.attn"]["A"] == [[4, 4], [32, 32]]


@pytest.mark.parametrize(("dim", "p", "q", "expected"),
                         [(128, 8, 576, (8, 16)), (128, 576, 8, (16, 8)), (24, 4, 32, (4, 6)),
                          (7, 8, 576, (7, 1)), (1, 8, 8, (1, 1)), (128, 2, 3, (2, 64))])
def test_split_dim(dim, p, q, expected):
    assert split_dim(dim, p, q) == expected


def test_sketch_preserves_squared_norms_in_expectation():
    """E ||S g||^2 = ||g||^2 over the seeds (the 1/sqrt(dim) scaling). A statistical check with
    a fixed draw: 200 seeds of 12 blocks; the relative spread of one seed's estimate is about
    0.3 here, so the mean over 200 seeds is within 0.1 of 1 by more than 4 standard errors."""
    shapes = {f"layer{k}": (4, 32, 48) for k in range(6)}
    generator = torch.Generator().manual_seed(0)
    gradient = {name: (torch.randn(4, 32, generator=generator),
                       torch.randn(48, 4, generator=generator)) for name in shapes}
    sqnorm = sum(float(g.pow(2).sum()) for pair in gradient.values() for g in pair)
    ratios = [float(_explicit_sketch(SketchProjection(32, seed, shapes, torch.device("cpu")),
                                     gradient).pow(2).sum()) / sqnorm for seed in range(200)]
    assert abs(sum(ratios) / len(ratios) - 1) < 0.1
