"""Superfiltering's IFD scoring loop, reimplemented from its description (arXiv 2402.00530).

Not their code: what their paper and README describe their `data_analysis.py` as doing. For
each Alpaca record, one at a time (batch size 1), with a Hugging Face causal LM in float32 and
its own loss (`model(input_ids, labels=...)`, logits at every position; `--dtype bfloat16`
loads the weights in bfloat16, to compare at equal precision):

- the prompt is `"{instruction}\\n{input}\\n"` (or `"{instruction}\\n"` without input);
- PPL(y|x): the prompt and the output tokenised together (at most `--max-length` tokens),
  labels masking the prompt's tokens;
- PPL(y): the output tokenised alone, labels = the input ids (its first token is not scored);
- IFD = PPL(y|x) / PPL(y).

    python benchmarks/perf/superfiltering_loop.py data.jsonl --model DIR --out scores.jsonl

writes one JSON line per record (`index`, `ifd`, `ppl_condition`, `ppl_alone`, `tokens`) and,
last, a line with the device's peak memory where there is a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def read_records(path: Path, limit: int | None) -> list[dict]:
    """JSON Lines or a JSON array of Alpaca records."""
    text = path.read_text(encoding="utf-8")
    records = (json.loads(text) if text.lstrip().startswith("[") else
               [json.loads(line) for line in text.splitlines() if line.strip()])
    return records[:limit]


def prompt_of(record: dict) -> str:
    if record.get("input"):
        return f"{record['instruction']}\n{record['input']}\n"
    return f"{record['instruction']}\n"


def perplexity(model, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        loss = model(input_ids=input_ids, labels=labels).loss
    return math.exp(loss.item())


def score_record(model, tokenizer, record: dict, max_length: int,
                 device: torch.device) -> dict:
    """PPL(y|x), PPL(y) and their ratio for one record: two forward passes."""
    prompt, output = prompt_of(record), record["output"]
    whole = tokenizer(prompt + output, return_tensors="pt", truncation=True,
                      max_length=max_length).input_ids.to(device)
    prompt_tokens = len(tokenizer(prompt).input_ids)
    labels = whole.clone()
    labels[0, :prompt_tokens] = -100
    alone = tokenizer(output, return_tensors="pt", truncation=True,
                      max_length=max_length).input_ids.to(device)
    if prompt_tokens >= whole.shape[1] or alone.shape[1] < 2:
        return {"ifd": None, "ppl_condition": None, "ppl_alone": None,
                "tokens": int(whole.shape[1] + alone.shape[1])}
    condition = perplexity(model, whole, labels)
    response = perplexity(model, alone, alone)
    return {"ifd": condition / response, "ppl_condition": condition, "ppl_alone": response,
            "tokens": int(whole.shape[1] + alone.shape[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="The weights' dtype (their script: the model's default, float32).")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(device)
    model.eval()
    with args.out.open("w", encoding="utf-8") as out:
        for index, record in enumerate(read_records(args.data, args.limit)):
            scores = score_record(model, tokenizer, record, args.max_length, device)
            out.write(json.dumps({"index": index, **scores}) + "\n")
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            out.write(json.dumps({"device_peak_mib": peak}) + "\n")


if __name__ == "__main__":
    main()
