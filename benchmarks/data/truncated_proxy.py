"""Save the first LAYERS decoder layers of a causal LM (default: the demo's SmolLM2-135M GGUF)
as a Hugging Face model directory, for fast iteration on a CPU.

The embeddings, the final norm and the LM head are kept; the layers after LAYERS are dropped.
A truncated proxy is a different (weaker) model: conclusions drawn with it are to be
confirmed on the full proxy (docs/results.md says which run used which).

    python benchmarks/data/truncated_proxy.py /tmp/smollm2-8l --layers 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gradfilter.demo import demo_config
from gradfilter.scoring.proxy import load_model, load_tokenizer


def truncate(source: str, layers: int, target: Path) -> None:
    from transformers import AutoModelForCausalLM

    full = load_model(source, torch.device("cpu"))
    if not 1 <= layers <= full.config.num_hidden_layers:
        raise SystemExit(f"--layers must be within 1..{full.config.num_hidden_layers}")
    config = full.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF is de-quantised to float on load
    config["num_hidden_layers"] = layers
    if config.get("layer_types"):
        config["layer_types"] = config["layer_types"][:layers]
    model = AutoModelForCausalLM.from_config(type(full.config).from_dict(config))
    kept = {name: value for name, value in full.state_dict().items()
            if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(target)
    load_tokenizer(source).save_pretrained(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", type=Path)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--source", default=None, help="default: the demo's SmolLM2 GGUF")
    args = parser.parse_args()
    truncate(args.source or demo_config().proxy, args.layers, args.target)
    print("saved", args.target)


if __name__ == "__main__":
    main()
