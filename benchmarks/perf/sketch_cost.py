"""What gradient sketches cost: the fused scoring path with --sketch-dim 0 and 128, in CPU time.

`gradfilter bench speed` reports wall time, which a shared CPU makes noisy; this script runs
the same fused path (`bench.speed.fused_path`: train M members for T epochs, two collection
passes) on one thread, alternating sketches off and on, and reports each run's process CPU
time per phase. The sketches touch only the collection passes (snapshot mode).

    python benchmarks/perf/sketch_cost.py /tmp/sinstruct_alpaca.jsonl --limit 32 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from gradfilter.bench.speed import fused_path, random_gpt2
from gradfilter.config import ScoreConfig
from gradfilter.data.dataset import read_dataset
from gradfilter.demo import demo_config
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.score import tokenize


def collection_cpu_seconds(model, encoded, config: ScoreConfig, dims: list[int],
                           repeats: int) -> dict[int, list[float]]:
    """CPU seconds of one collection pass (every batch: forward, backward, the recorder) with
    each sketch size, alternating, `repeats` times, on one ensemble whose B is not zero."""
    from gradfilter.scoring.batching import Batcher, collection_batches
    from gradfilter.scoring.ensemble import LoRAEnsemble, RowGradRecorder, per_example_losses

    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.targets, config.seed)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B = 0 at init would make grad A vanish; give it trained-like values
        for layer in ensemble.layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.02)
    batcher = Batcher(encoded, torch.device("cpu"))
    lengths = torch.tensor([len(e.input_ids) for e in encoded]).numpy()
    batches = collection_batches(lengths, config.collect_batch_size, True)
    projections = {d: ensemble.sketch_projection(d, config.seed) if d else None for d in dims}
    seconds: dict[int, list[float]] = {d: [] for d in dims}
    for _ in range(repeats):
        for dim in dims:
            start = time.process_time()
            for rows in batches:
                batch = batcher.batch([rows] * config.members)
                recorder = RowGradRecorder(len(rows) * config.members, torch.device("cpu"),
                                           projections[dim])
                ensemble.set_recorder(recorder)
                per_example_losses(ensemble.model, batch.input_ids, batch.attention_mask,
                                   batch.response_mask, batch.targets).sum().backward()
                ensemble.set_recorder(None)
                for param in ensemble.parameters():
                    param.grad = None
            seconds[dim].append(time.process_time() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--proxy", default="random-gpt2:4:256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dims", default="0,128")
    parser.add_argument("--collect-only", action="store_true",
                        help="Time collection passes only (where sketches are made), alternating.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ScoreConfig(members=4, batch_size=8, collect_batch_size=8, max_length=128,
                         device="cpu")
    with tempfile.TemporaryDirectory() as scratch:
        proxy = (random_gpt2(args.proxy, demo_config().proxy, Path(scratch))
                 if args.proxy.startswith("random-gpt2") else args.proxy)
        config = replace(config, proxy=proxy)
        tokens = tokenize(read_dataset(args.data, None, args.limit), load_tokenizer(proxy),
                          config, True)
        encoded = [tokens.encoded[i] for i in tokens.scorable]
        model = load_model(proxy, torch.device("cpu"))
        config = config.with_targets(default_targets(model))
        if args.collect_only:
            dims = [int(d) for d in args.dims.split(",")]
            seconds = collection_cpu_seconds(model, encoded, config, dims, args.repeats)
            for dim, values in seconds.items():
                print(f"sketch_dim {dim}: collection pass CPU s {[round(v, 2) for v in values]}, "
                      f"median {sorted(values)[len(values) // 2]:.2f}")
            return
        runs = []
        for _ in range(args.repeats):
            for dim in (int(d) for d in args.dims.split(",")):
                start = time.process_time()
                stats = fused_path(copy.deepcopy(model), encoded, replace(config, sketch_dim=dim),
                                   torch.device("cpu"), torch.float32)
                runs.append({"sketch_dim": dim, "cpu_s": time.process_time() - start,
                             "phases_wall_s": stats.phase_seconds})
                print(json.dumps(runs[-1]))
    for dim in sorted({r["sketch_dim"] for r in runs}):
        mine = [r for r in runs if r["sketch_dim"] == dim]
        collect = [sum(v for k, v in r["phases_wall_s"].items() if k.startswith("collect"))
                   for r in mine]
        print(f"sketch_dim {dim}: CPU s per run {[round(r['cpu_s'], 1) for r in mine]}, "
              f"collection wall s {[round(c, 1) for c in collect]}")
    print(f"{len(encoded)} examples, {sum(len(e.input_ids) for e in encoded)} tokens, "
          f"proxy {args.proxy}, M={config.members}, T={config.epochs}, one thread")


if __name__ == "__main__":
    main()
