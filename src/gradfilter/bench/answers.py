"""The targets' answers to the test prompts: greedy generation, cached on disk, and the
answers files (`answers-<model>.jsonl`) that the judge and human benchmarks read and write.

Answers are cached under the model's identity, the prompt and the decoding settings (one
atomically written file each): a rerun generates nothing. Only generation needs torch, and it
imports it inside its functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import GradfilterError
from ..outputs import atomic_write_text
from .cache import EntryCache, sha256_of
from .prompts import Prompt, json_object

Log = Callable[[str], object]

# Bumped whenever the way answers are generated changes, so that cached answers are not reused.
GENERATION_VERSION = "greedy-v1"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".jinja", ".txt")


def model_identity(model: str) -> dict[str, Any]:
    """What a model's answers are cached under.

    An adapter directory is its files' sha256 plus its base's identity (so a moved adapter keeps
    its answers and a retrained one does not). A local base (directory or `.gguf` file) is its
    resolved path plus each file's name, size and modification time: hashing gigabytes of base
    weights on every run would cost more than it protects. A hub id is the id.
    """
    path = Path(model)
    config_path = path / "adapter_config.json"
    if config_path.is_file():
        base = _adapter_base(config_path)
        files = sorted(p for p in path.iterdir() if p.name.startswith("adapter_"))
        if not any(p.name.startswith("adapter_model") for p in files):
            raise GradfilterError(f"{path}: an adapter directory without adapter_model weights")
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        return {"adapter_sha256": digest.hexdigest(), "base": _base_identity(base)}
    return {"model": _base_identity(model)}


def _adapter_base(config_path: Path) -> str:
    try:
        base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError):
        raise GradfilterError(f"{config_path}: not a PEFT adapter config") from None
    if not isinstance(base, str) or not base:
        raise GradfilterError(f"{config_path}: no base_model_name_or_path")
    return base


def _base_identity(model: str) -> dict[str, Any]:
    path = Path(model)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    else:
        return {"hub_id": model}
    return {"path": str(path.resolve()),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def answer_key(identity: dict[str, Any], prompt: str, max_new_tokens: int) -> str:
    return sha256_of({"model": identity, "prompt": prompt, "max_new_tokens": max_new_tokens,
                    "decoding": GENERATION_VERSION})


def generate_answers(model: str, prompts: Sequence[Prompt], *, max_new_tokens: int,
                     batch_size: int, device: str = "auto", cache_dir: Path | None = None,
                     log: Log = print) -> list[str]:
    """Greedy answers of `model` (an adapter directory or a model path) to `prompts`.

    Answers found in `cache_dir` are reused; the model is loaded only if some are missing, and
    each new answer is cached as soon as its batch is done. The prompt is rendered with the
    tokenizer's chat template (one user turn, generation prompt added) when it has one, else
    with gradfilter's plain template (`prompt + "\\n"` after the tokenizer's leading special
    tokens). A prompt longer than the model's context less `max_new_tokens` keeps its end.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise GradfilterError("max_new_tokens and batch_size must be at least 1")
    cache = EntryCache(Path(cache_dir) / "answers", log) if cache_dir is not None else None
    identity = model_identity(model)
    keys = [answer_key(identity, p.text, max_new_tokens) for p in prompts]
    answers: list[str | None] = [None] * len(prompts)
    if cache is not None:
        for i, key in enumerate(keys):
            entry = cache.get(key)
            answers[i] = entry["answer"] if entry else None
    missing = [i for i, answer in enumerate(answers) if answer is None]
    log(f"{model}: {len(prompts) - len(missing)} answers cached, {len(missing)} to generate")
    if missing:
        texts = [prompts[i].text for i in missing]
        for k, answer in _generate(model, texts, max_new_tokens, batch_size, device, log):
            i = missing[k]
            answers[i] = answer
            if cache is not None:
                cache.put(keys[i], {"answer": answer, "prompt_id": prompts[i].id,
                                    "model": model, "max_new_tokens": max_new_tokens})
    if any(answer is None for answer in answers):
        raise GradfilterError(f"{model}: generation gave fewer answers than prompts")
    return [str(answer) for answer in answers]


def _load_target(model: str, device: str):
    """(model, tokenizer) for a PEFT adapter directory (merged into its base) or a model path."""
    from ..scoring.proxy import load_model, load_tokenizer, resolve_device

    torch_device = resolve_device(device)  # type: ignore[arg-type]
    config_path = Path(model) / "adapter_config.json"
    if not config_path.is_file():
        return load_model(model, torch_device), load_tokenizer(model)
    from peft import PeftModel

    base = _adapter_base(config_path)
    has_tokenizer = (Path(model) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model if has_tokenizer else base)
    backbone = load_model(base, torch_device)
    try:
        merged = PeftModel.from_pretrained(backbone, model).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise GradfilterError(f"{model}: cannot load the adapter on {base}: {exc}") from None
    return merged.eval().to(torch_device), tokenizer


def _render_ids(tokenizer, text: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 tokenize=False, add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    return _leading_special_ids(tokenizer) + list(
        tokenizer(text + "\n", add_special_tokens=False)["input_ids"])


def _leading_special_ids(tokenizer) -> list[int]:
    """The special tokens (e.g. BOS) the tokenizer puts before a text by default."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    n = len(special) - len(plain)
    return list(special[:n]) if n > 0 and special[n:n + len(plain)] == plain else []


def _context_length(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def _generate(model_path: str, texts: list[str], max_new_tokens: int, batch_size: int,
              device: str, log: Log):
    """Yield (position in `texts`, answer), longest prompts first, batch by batch."""
    import torch
    from transformers import GenerationConfig

    model, tokenizer = _load_target(model_path, device)
    ids = [_render_ids(tokenizer, text) for text in texts]
    context = _context_length(model)
    if context is not None:
        room = context - max_new_tokens
        if room < 1:
            raise GradfilterError(f"{model_path}: max_new_tokens {max_new_tokens} leaves no room "
                                  f"for a prompt in a {context}-token context")
        cut = sum(len(x) > room for x in ids)
        if cut:
            log(f"{model_path}: {cut} prompts longer than {room} tokens keep their last {room}")
        ids = [x[-room:] for x in ids]
    eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad, eos_token_id=sorted(eos) or None)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device_of_model = next(model.parameters()).device
    done = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        input_ids, mask = _left_pad([ids[i] for i in batch], pad, device_of_model)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask,
                                 generation_config=config)
        texts_out = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        for i, answer in zip(batch, texts_out, strict=True):
            yield i, answer.strip()
        done += len(batch)
        if done == len(order) or done * 10 // len(order) > (done - len(batch)) * 10 // len(order):
            log(f"{model_path}: generated {done}/{len(order)}")


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _left_pad(rows: list[list[int]], pad: int, device):
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        if row:
            input_ids[k, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[k, width - len(row):] = 1
    return input_ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# Answers files: one JSON line per prompt, {"id", "test_set", "prompt", "answer"}
# --------------------------------------------------------------------------------------------

ANSWER_FIELDS = ("id", "test_set", "prompt", "answer")


def write_answers(path: Path, prompts: Sequence[Prompt], answers: Sequence[str]) -> None:
    lines = [json.dumps({"id": p.id, "test_set": p.test_set, "prompt": p.text, "answer": a},
                        ensure_ascii=False) + "\n" for p, a in zip(prompts, answers, strict=True)]
    atomic_write_text(path, "".join(lines))


def read_answers(path: Path) -> list[tuple[Prompt, str]]:
    """(prompt, answer) per line of an answers file, in its order; blank lines skipped.

    A bad line is a one-line GradfilterError naming the file, the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise GradfilterError(f"{path}: no such answers file")
    rows: list[tuple[Prompt, str]] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {line_number}"
            record = json_object(path, line_number, line)
            for field in ANSWER_FIELDS:
                if not isinstance(record.get(field), str):
                    raise GradfilterError(f"{where}: field '{field}': missing or not a string "
                                          f"(an answers file has {', '.join(ANSWER_FIELDS)})")
            if record["id"] in seen:
                raise GradfilterError(f"{where}: field 'id': {record['id']!r} appears twice")
            seen.add(record["id"])
            rows.append((Prompt(record["id"], record["test_set"], record["prompt"]),
                         record["answer"]))
    if not rows:
        raise GradfilterError(f"{path}: no answers in the file")
    return rows
