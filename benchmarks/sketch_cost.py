"""What gradient sketches cost: the fused scoring path with --sketch-dim 0 and 128, in CPU time.

`gradfilter bench speed` reports wall time, which a shared CPU makes noisy; this script runs
the same fused path (`bench.speed.fused_path`: train M members for T epochs, two collection
passes) on one thread, alternating sketches off and on, and reports each run's process CPU
time per phase. The sketches touch only the collection passes (snapshot mode).

    python benchmarks/sketch_cost.py /tmp/sinstruct_alpaca.jsonl --limit 32 --repeats 2
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--proxy", default="random-gpt2:4:256")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dims", default="0,128")
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
