"""Per-example squared gradient norms from one batched backward equal one backward() per example."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

from gradfilter.data.conversations import Turn
from gradfilter.scoring.batching import Batcher
from gradfilter.scoring.ensemble import LoRAEnsemble, RowGradRecorder, per_example_losses
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.tokenization import encode, resolve_template

MEMBERS, RANK, ALPHA = 3, 4, 8.0

CONVERSATIONS = [
    [Turn("user", "Hi"), Turn("assistant", "Hello there, how can I help?")],
    [Turn("user", "Translate the sentence into French: the cat sleeps on the mat. " * 3),
     Turn("assistant", "Le chat dort sur le tapis.")],
    [Turn("user", "Give three tips for staying healthy."),
     Turn("assistant", "Eat a balanced diet, exercise regularly and sleep well. " * 2)],
    [Turn("system", "Be brief."), Turn("user", "What is 2 + 2?"), Turn("assistant", "4"),
     Turn("user", "And times 10?"), Turn("assistant", "40, café 🙂")],
]


def _ensemble(proxy: str) -> LoRAEnsemble:
    model = load_model(proxy, torch.device("cpu"))
    ensemble = LoRAEnsemble(model, MEMBERS, RANK, ALPHA, default_targets(model), seed=3)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # B = 0 at init makes grad A vanish: give B trained-like values
        for layer in ensemble.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.2)
    return ensemble


def _batched(ensemble: LoRAEnsemble, encoded) -> tuple[torch.Tensor, torch.Tensor]:
    rows = list(range(len(encoded)))
    batch = Batcher(encoded, torch.device("cpu")).batch([rows] * MEMBERS)
    recorder = RowGradRecorder(batch.input_ids.shape[0], batch.input_ids.device)
    ensemble.set_recorder(recorder)
    losses = per_example_losses(ensemble.model, batch.input_ids, batch.attention_mask,
                                batch.response_mask, batch.targets)
    losses.sum().backward()
    ensemble.set_recorder(None)
    shape = (MEMBERS, len(encoded))
    return losses.detach().reshape(shape), recorder.sqnorms.reshape(shape)


def _reference(proxy: str, ensemble: LoRAEnsemble, member: int, encoded):
    """PEFT model with member m's adapter; plain HF loss and one backward() per example."""
    base = load_model(proxy, torch.device("cpu"))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                        target_modules=list(ensemble.targets),
                        fan_in_fan_out=ensemble.uses_conv1d)
    model = get_peft_model(base, config)
    set_peft_model_state_dict(model, ensemble.member_state(member))
    model.eval()
    losses, sqnorms = [], []
    for item in encoded:
        ids = torch.from_numpy(item.input_ids)[None]
        labels = ids.clone()
        labels[0, ~torch.from_numpy(item.response_mask)] = -100
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
        losses.append(loss.item())
        sqnorms.append(sum(g.pow(2).sum() for g in grads).item())
    return torch.tensor(losses), torch.tensor(sqnorms)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_example_sqnorms_match_one_backward_per_example(arch, gpt2_proxy, llama_proxy):
    proxy = gpt2_proxy if arch == "gpt2" else llama_proxy
    tokenizer = load_tokenizer(proxy)
    template = resolve_template(tokenizer, "auto")
    assert template == ("plain" if arch == "gpt2" else "chat")
    encoded = [encode(turns, tokenizer, template, 512) for turns in CONVERSATIONS]
    lengths = {len(e.input_ids) for e in encoded}
    assert len(lengths) == len(encoded), "examples must differ in length to exercise padding"
    ensemble = _ensemble(proxy)
    losses, sqnorms = _batched(ensemble, encoded)
    for member in range(MEMBERS):
        ref_losses, ref_sqnorms = _reference(proxy, ensemble, member, encoded)
        torch.testing.assert_close(losses[member], ref_losses, rtol=1e-5, atol=0)
        torch.testing.assert_close(sqnorms[member], ref_sqnorms, rtol=1e-4, atol=0)
    assert sqnorms.min() > 0
    assert not torch.allclose(sqnorms[0], sqnorms[1]), "members must differ"
