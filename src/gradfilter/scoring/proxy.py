"""Load the frozen proxy LM and its tokenizer: a hub id, a local directory or a `.gguf` file."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DeviceChoice, DtypeChoice
from ..errors import GradfilterError

# LoRA targets per architecture: all attention and MLP projections (method.md §2).
DEFAULT_TARGETS = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def resolve_device(choice: DeviceChoice) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise GradfilterError("--device cuda: no CUDA device is available")
    return torch.device(choice)


def resolve_dtype(choice: DtypeChoice, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast; `auto` is bfloat16 on a GPU that supports it, else float32."""
    if choice == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return torch.bfloat16 if choice == "bfloat16" else torch.float32


def _source(proxy: str) -> tuple[str, dict]:
    path = Path(proxy)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GradfilterError(f"{proxy}: no such GGUF file")
        return str(path.parent), {"gguf_file": path.name}
    return proxy, {}


def load_tokenizer(proxy: str):
    from transformers import AutoTokenizer

    source, extra = _source(proxy)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except OSError as exc:
        raise GradfilterError(f"cannot load the proxy tokenizer {proxy!r}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise GradfilterError(f"the proxy {proxy!r} has no fast tokenizer (offsets are needed)")
    return tokenizer


def load_model(proxy: str, device: torch.device) -> torch.nn.Module:
    """The frozen backbone, float32 weights, eval mode (no dropout anywhere)."""
    from transformers import AutoModelForCausalLM

    source, extra = _source(proxy)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra)
    except OSError as exc:
        raise GradfilterError(f"cannot load the proxy model {proxy!r}: {exc}") from None
    return prepare_backbone(model, device)


def prepare_backbone(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    config = model.config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None):
            raise GradfilterError(f"proxies with {name} are not supported")
    model.eval()
    model.requires_grad_(False)
    return model.to(device)


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    model_type = model.config.model_type
    if model_type not in DEFAULT_TARGETS:
        raise GradfilterError(
            f"no default LoRA targets for model type {model_type!r}; name them with --lora-targets"
        )
    return DEFAULT_TARGETS[model_type]
