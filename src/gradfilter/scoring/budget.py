"""How many padded tokens one micro-batch holds (`--batch-tokens auto`).

A pass that keeps activations for a backward (training, gradient collection) holds about
`gradient_bytes_per_token` bytes per row-token until its backward; a forward-only pass (IFD,
perplexity) holds about one layer's worth at a time. `auto` is chosen from the device and the
proxy's shape only (never from the memory free at the moment), so the same command on the same
machine always cuts the same micro-batches and gives the same numbers, bit for bit:

- CPU: the budget measured fastest on a CPU (docs/performance.md, "Micro-batches"), lowered
  where a quarter of the machine's physical memory would not hold a gradient micro-batch.
  Large padded batches are slower on a CPU: every big activation is a fresh mmap the kernel
  must zero, and the working set leaves the caches.
- CUDA: half of the device's memory, less the weights, divided by the bytes per token; a
  forward-only pass gets four times that (it keeps no activations), capped where its logits
  (10 bytes x vocabulary per token) would fill the same half.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Purpose = Literal["gradients", "forward"]

CPU_GRADIENT_TOKENS = 2048  # fastest measured (docs/performance.md), forward and backward
CPU_FORWARD_TOKENS = 2048  # fastest measured, forward only
CPU_MEMORY_SHARE = 0.25  # of physical memory, for one gradient micro-batch
CUDA_MEMORY_SHARE = 0.5  # of device memory, less the weights
MIN_TOKENS = 256


def gradient_bytes_per_token(config, dtype: torch.dtype) -> float:
    """Host/device bytes one row-token holds through a LoRA forward and backward.

    Per layer, the tensors autograd keeps are about 8 hidden-width and 5 MLP-width vectors
    (LoRA inputs, attention q/k/v/out, norms, MLP activations); 1.5 times that covers the
    temporaries of the backward (calibrated on SmolLM2-135M in float32: 2.4 MB per row-token
    measured, 2.6 MB estimated). The response-only logits add one float32 vocabulary row and
    its gradient.
    """
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    inner = _first(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    width = torch.finfo(dtype).bits // 8
    return 1.5 * width * layers * (8 * hidden + 5 * inner) + 8.0 * config.vocab_size


def _first(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    return 0


def physical_memory_bytes() -> int:
    """The machine's physical memory (fixed for a machine, unlike the memory free now)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def auto_batch_tokens(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                      purpose: Purpose) -> int:
    """The `auto` budget for `purpose` on `device` (see the module's docstring)."""
    per_token = gradient_bytes_per_token(model.config, dtype)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        tokens = CUDA_MEMORY_SHARE * (total - weights) / per_token
        if purpose == "forward":  # bf16 logits, their float32 copy and its log-softmax
            logits = 10.0 * model.config.vocab_size
            tokens = min(4 * tokens, CUDA_MEMORY_SHARE * (total - weights) / logits)
        return max(MIN_TOKENS, int(tokens) // MIN_TOKENS * MIN_TOKENS)
    if purpose == "forward":  # what a forward-only micro-batch holds at once: its logits
        per_token, fastest = 8.0 * model.config.vocab_size, CPU_FORWARD_TOKENS
    else:
        fastest = CPU_GRADIENT_TOKENS
    cap = int(CPU_MEMORY_SHARE * physical_memory_bytes() / per_token)
    return max(MIN_TOKENS, min(fastest, cap))


def batch_tokens(setting: int | None, model: torch.nn.Module, device: torch.device,
                 dtype: torch.dtype, purpose: Purpose) -> int:
    """`--batch-tokens`: the number given, or `auto`'s choice for `purpose` (None)."""
    return setting if setting is not None else auto_batch_tokens(model, device, dtype, purpose)
