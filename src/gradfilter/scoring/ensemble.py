"""An ensemble of M LoRA adapters on one frozen backbone, run as one batched model.

The member is a batch dimension: a batch holds M slices of rows, member-major, and each
target layer applies member m's LoRA (A[m], B[m]) to slice m only. Members share the frozen
backbone and nothing else: each has its own initialisation and data order (seeded by
(seed, m) only), its own loss, its own gradient clipping. AdamW is elementwise and the
schedule is identical, so one optimiser over the stacked tensors is exactly M optimisers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GradfilterError
from ..seeds import INIT_STREAM, derived_seed
from .prefix import PrefixCache
from .sketch import BlockProjection, SketchProjection


class RowGradRecorder:
    """Accumulates per-row squared norms (and, given a projection, sketches) of the LoRA
    gradients during one backward.

    For a row i with layer input x_i [T, in], LoRA hidden h_i = x_i A^T [T, r] and LoRA
    output u_i = h_i B^T [T, out]: grad A_i = (dL/dh_i)^T x_i and grad B_i = (dL/du_i)^T h_i.
    Both are r x (in + out) numbers per row, so they are formed exactly and squared in float32.
    With `sketch`, `sketches` [rows, sketch.dim] sums each block's projection (see sketch.py),
    formed from the same token factors. `scale` multiplies the backward's gradients first: a
    backward of `sum_i L_i / b` (a training micro-batch) gives each row grad L_i / b, so scale
    b records ||grad L_i||^2 and the sketch of grad L_i themselves.
    """

    def __init__(self, rows: int, device: torch.device,
                 sketch: SketchProjection | None = None, scale: float = 1.0) -> None:
        self.rows = rows
        self.scale = scale
        self.sqnorms = torch.zeros(rows, dtype=torch.float32, device=device)
        self.sketch = sketch
        self.sketches = (None if sketch is None else
                         torch.zeros(rows, sketch.dim, dtype=torch.float32, device=device))

    def watch(self, x: torch.Tensor, h: torch.Tensor, u: torch.Tensor, layer: str = "") -> None:
        rows = self.rows
        x_rows = x.reshape(rows, -1, x.shape[-1]).float()
        h_rows = h.reshape(rows, -1, h.shape[-1])
        block_a, block_b = (None, None) if self.sketch is None else self.sketch.blocks[layer]
        h.register_hook(lambda grad: self._add(grad.reshape(rows, -1, grad.shape[-1]), x_rows,
                                               block_a))
        u.register_hook(lambda grad: self._add(grad.reshape(rows, -1, grad.shape[-1]), h_rows,
                                               block_b))

    def _add(self, out_grad: torch.Tensor, inputs: torch.Tensor,
             block: BlockProjection | None) -> None:
        out_grad = out_grad.float()
        if self.scale != 1.0:
            out_grad = out_grad * self.scale
        inputs = inputs.float()
        per_row = torch.bmm(out_grad.transpose(1, 2), inputs)
        self.sqnorms.add_(per_row.pow(2).sum(dim=(1, 2)))
        if block is not None:
            assert self.sketches is not None
            self.sketches.add_(block.apply(out_grad, inputs))


def recorded_backward(ensemble: LoRAEnsemble, batch, recorder: RowGradRecorder | None,
                      autocast: torch.autocast, divisor: float = 1.0) -> torch.Tensor:
    """One forward and one backward of `sum(row losses) / divisor` over `batch` (a Batcher
    batch, all held members' rows), with `recorder` watching every LoRA layer (None: nothing
    recorded); every row's loss, detached."""
    ensemble.set_recorder(recorder)
    try:
        with autocast:
            losses = per_example_losses(ensemble.model, batch.input_ids, batch.attention_mask,
                                        batch.response_mask, batch.targets)
        (losses.sum() / divisor).backward()
    finally:
        ensemble.set_recorder(None)
    return losses.detach()


class EnsembleLoRA(nn.Module):
    """A frozen linear layer plus M LoRA adapters, member m applied to rows slice m."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int,
                 members: int, rank: int, alpha: float, name: str = "") -> None:
        super().__init__()
        self.base = base
        self.name = name  # the layer's name in the model: what its sketch factors hang on
        self.members = members
        self.in_features = in_features
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(members, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(members, out_features, rank))
        self.recorder: RowGradRecorder | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        x_members = x.reshape(self.members, -1, self.in_features)
        h = torch.bmm(x_members, self.lora_A.transpose(1, 2).to(x.dtype))
        u = torch.bmm(h, self.lora_B.transpose(1, 2).to(h.dtype))
        if self.recorder is not None:
            self.recorder.watch(x, h, u, self.name)
        return y + (self.scale * u).reshape(y.shape).to(y.dtype)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed linear: weight [in, out]
        return module.weight.shape[0], module.weight.shape[1]
    return None


class LoRAEnsemble:
    """Installs EnsembleLoRA layers into a frozen model and trains them as M members.

    `member_ids` are the (global) members this process holds, default all of range(members);
    under torchrun a rank holds a subset. Local slot k of every stacked tensor is member
    member_ids[k], initialised from (seed, member_ids[k]) whatever else is held beside it.
    """

    def __init__(self, model: nn.Module, members: int, rank: int, alpha: float,
                 targets: tuple[str, ...], seed: int,
                 member_ids: Sequence[int] | None = None) -> None:
        self.model = model
        self.member_ids = list(range(members)) if member_ids is None else list(member_ids)
        if not self.member_ids or any(not 0 <= m < members for m in self.member_ids):
            raise GradfilterError(f"member ids {self.member_ids} are not within 0..{members - 1}")
        members = len(self.member_ids)
        self.members = members
        self.rank = rank
        self.alpha = alpha
        self.targets = targets
        self.uses_conv1d = False
        self.layers: dict[str, EnsembleLoRA] = {}
        for name, module in list(model.named_modules()):
            shape = _linear_shape(module)
            if shape is None or name.rsplit(".", 1)[-1] not in targets:
                continue
            self.uses_conv1d |= type(module).__name__ == "Conv1D"
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            device = next(module.parameters()).device
            layer = EnsembleLoRA(module, *shape, members, rank, alpha, name).to(device)
            setattr(parent, child, layer)
            self.layers[name] = layer
        if not self.layers:
            raise GradfilterError(f"no LoRA target layers named {list(targets)} in the proxy")
        self.initialise(seed)

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Stacked LoRA tensors [members, ...] under stable names, e.g. 'h.0.attn.c_attn.A'."""
        return [(f"{name}.{key}", p) for name, layer in self.layers.items()
                for key, p in (("A", layer.lora_A), ("B", layer.lora_B))]

    @torch.no_grad()
    def initialise(self, seed: int) -> None:
        """PEFT's default init per member: A ~ U(+-1/sqrt(in)), B = 0, from seed (seed, m)."""
        for k, m in enumerate(self.member_ids):
            generator = torch.Generator().manual_seed(derived_seed(seed, m, INIT_STREAM))
            for layer in self.layers.values():
                bound = 1.0 / math.sqrt(layer.in_features)
                values = torch.rand(layer.lora_A.shape[1:], generator=generator) * 2 * bound - bound
                layer.lora_A[k].copy_(values)
                layer.lora_B[k].zero_()

    def sketch_projection(self, dim: int, seed: int) -> SketchProjection:
        """The gradient-sketch projection of this ensemble's layers (the same for every
        member, batch and process: it depends on seed, layer names, shapes and dim only)."""
        device = next(iter(self.layers.values())).lora_A.device
        shapes = {name: (self.rank, layer.in_features, layer.lora_B.shape[1])
                  for name, layer in self.layers.items()}
        return SketchProjection(dim, seed, shapes, device)

    def set_recorder(self, recorder: RowGradRecorder | None) -> None:
        for layer in self.layers.values():
            layer.recorder = recorder

    def clip_per_member(self, max_norm: float) -> None:
        """torch's clip_grad_norm_, applied to each member's own parameters separately."""
        params = self.parameters()
        sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for p in params:
            p.grad.mul_(coef.view(-1, *([1] * (p.dim() - 1))))

    def member_states(self, optimizer: torch.optim.Optimizer | None = None) -> dict[int, dict]:
        """Each held member's own state by global member id, on the host: its LoRA A and B and,
        with `optimizer` (AdamW over `parameters()`), its AdamW moments. Opaque to whoever
        stores it; `load_member_states` takes it back."""
        named = self.named_parameters()
        moments = optimizer.state_dict()["state"] if optimizer is not None else None
        states = {}
        for k, m in enumerate(self.member_ids):
            state = {"params": {name: p.detach()[k].cpu().clone() for name, p in named}}
            if moments is not None:
                for moment in ("exp_avg", "exp_avg_sq"):
                    state[moment] = {name: moments[i][moment][k].cpu().clone()
                                     for i, (name, _) in enumerate(named)}
            states[m] = state
        return states

    @staticmethod
    def shared_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
        """What AdamW holds for all members alike: its step count and param groups."""
        state = optimizer.state_dict()
        return {"adam_step": state["state"][0]["step"].cpu().clone(),
                "param_groups": state["param_groups"]}

    @torch.no_grad()
    def load_member_states(self, states: dict[int, dict],
                           optimizer: torch.optim.Optimizer | None = None,
                           shared: dict | None = None) -> None:
        """Put `member_states` back: the adapters, and the optimiser's state if given."""
        named = self.named_parameters()
        for name, p in named:
            for k, m in enumerate(self.member_ids):
                p[k].copy_(states[m]["params"][name])
        if optimizer is None:
            return
        assert shared is not None
        optimizer.load_state_dict({
            "state": {i: {"step": shared["adam_step"].clone(),
                          **{moment: torch.stack([states[m][moment][name]
                                                  for m in self.member_ids])
                             for moment in ("exp_avg", "exp_avg_sq")}}
                      for i, (name, _) in enumerate(named)},
            "param_groups": shared["param_groups"]})

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """The adapter in local slot m (global member member_ids[m]) under PEFT's key names."""
        state = {}
        for name, layer in self.layers.items():
            prefix = f"base_model.model.{name}"
            state[f"{prefix}.lora_A.weight"] = layer.lora_A[m].detach().float().cpu().contiguous()
            state[f"{prefix}.lora_B.weight"] = layer.lora_B[m].detach().float().cpu().contiguous()
        return state

    def save_member(self, m: int, directory: Path, base_name: str) -> None:
        """A standard PEFT LoRA adapter directory for the member in local slot m."""
        from safetensors.torch import save_file

        from ..outputs import atomic_write_text

        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_name,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.0,
            "target_modules": sorted(self.targets),
            "fan_in_fan_out": self.uses_conv1d,
            "bias": "none",
            "inference_mode": True,
        }
        tmp = directory / "adapter_model.safetensors.tmp"
        save_file(self.member_state(m), str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / "adapter_model.safetensors")
        atomic_write_text(directory / "adapter_config.json", json.dumps(config, indent=2) + "\n")


@dataclass(frozen=True)
class ResponseTargets:
    """Where a padded batch's response tokens are, precomputed on the host.

    `positions` index the flattened [rows * width] hidden states at the positions that predict
    a response token, `rows` is the row of each, `labels` the token predicted, `counts` each
    row's number of response tokens (at least 1). With these the loss needs no data-dependent
    shape on the device, so a training step makes no host sync.
    """

    positions: torch.Tensor
    rows: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_masks(cls, input_ids: np.ndarray, response_mask: np.ndarray) -> ResponseTargets:
        width = input_ids.shape[1]
        targets = response_mask[:, 1:]
        row_of, col = np.nonzero(targets)
        counts = np.maximum(targets.sum(1), 1).astype(np.float32)
        return cls(torch.from_numpy((row_of * width + col).astype(np.int64)),
                   torch.from_numpy(row_of.astype(np.int64)),
                   torch.from_numpy(input_ids[row_of, col + 1]),
                   torch.from_numpy(counts))

    def to(self, device: torch.device) -> ResponseTargets:
        pin = device.type == "cuda"
        return ResponseTargets(*(_to(t, device, pin) for t in
                                 (self.positions, self.rows, self.labels, self.counts)))


def _to(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    if pin:
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def last_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prefix: PrefixCache | None = None) -> torch.Tensor:
    """The body's last hidden states [rows, width, hidden] (after its final norm); with
    `prefix`, of the rows' own tokens, which follow that shared prefix."""
    if prefix is None:
        return model.base_model(input_ids=input_ids,
                                attention_mask=attention_mask).last_hidden_state
    return model.base_model(input_ids=input_ids,
                            attention_mask=prefix.attention_mask(attention_mask),
                            **prefix.inputs(input_ids.shape[0])).last_hidden_state


def per_example_losses(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       response_mask: torch.Tensor,
                       targets: ResponseTargets | None = None,
                       prefix: PrefixCache | None = None,
                       hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's own mean cross-entropy over its response tokens (float32, [rows]).

    Logits are formed only at positions that predict a response token, so the LM head's cost
    and memory scale with the response tokens, not the padded batch. Pass `targets` (built on
    the host) to avoid the host sync that finding those positions on the device costs. With
    `prefix` (forward-only passes), the rows are what follows that shared prefix. `hidden`:
    the rows' `last_hidden` states, run already (a pass that also pools them).
    """
    if targets is None:
        targets = ResponseTargets.from_masks(input_ids.cpu().numpy(),
                                             response_mask.cpu().numpy()).to(input_ids.device)
    if hidden is None:
        hidden = last_hidden(model, input_ids, attention_mask, prefix)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, targets.positions)
    logits = model.get_output_embeddings()(flat).float()
    token_losses = F.cross_entropy(logits, targets.labels, reduction="none")
    sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    sums.index_add_(0, targets.rows, token_losses)
    return sums / targets.counts


def linear_warmup_decay(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR factor for step k: linear warm-up over W steps, then linear decay to 1/(K-W)."""
    warmup = max(1, round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor
