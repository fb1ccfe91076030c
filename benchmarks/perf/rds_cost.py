"""What RDS+ adds to the IFD pass (`score --method ifd --target-examples`), in CPU and wall time.

The IFD baseline's two forward passes (PPL(y|x), PPL(y)) are timed alone and with target
examples, alternating, on one thread: with targets, PPL(y|x)'s forward also pools every
record's last hidden states (the cosines with the targets come from it), and one more forward
runs over the target examples. Both are `scoring.baselines.baseline_columns`, the code `score`
runs; the ifd columns are checked equal.

    OMP_NUM_THREADS=1 python benchmarks/perf/rds_cost.py \\
        ../shared/data/sharegpt_sample_2k.jsonl.gz --proxy /tmp/smollm2-8l --limit 40 \\
        --targets 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gradfilter.bench.speed import random_gpt2
from gradfilter.config import ScoreConfig
from gradfilter.data.dataset import read_dataset
from gradfilter.demo import demo_config
from gradfilter.progress import progress_bars
from gradfilter.scoring.baselines import ProxyForward, baseline_columns
from gradfilter.scoring.proxy import load_model, load_tokenizer, resolve_dtype
from gradfilter.scoring.representations import unit_rows
from gradfilter.scoring.score import tokenize


def timed(work) -> tuple[float, float, dict]:
    """(CPU seconds of this process, wall seconds, the result) of `work()`."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--proxy", default="random-gpt2:4:256")
    parser.add_argument("--limit", type=int, default=40, help="Pool records (the first N).")
    parser.add_argument("--targets", type=int, default=4,
                        help="Target examples: the N records after the pool's.")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="As score's --dtype (auto: bfloat16 autocast on a CPU with AMX).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ScoreConfig(collect_batch_size=8, max_length=args.max_length, device="cpu")
    dtype = resolve_dtype(args.dtype, torch.device("cpu"), "forward")
    with tempfile.TemporaryDirectory() as scratch:
        proxy = (random_gpt2(args.proxy, demo_config().proxy, Path(scratch))
                 if args.proxy.startswith("random-gpt2") else args.proxy)
        config = replace(config, proxy=proxy)
        tokenizer = load_tokenizer(proxy)
        tokens = tokenize(read_dataset(args.data, None, args.limit + args.targets), tokenizer,
                          config, True)
        pool = [i for i in tokens.scorable if i < args.limit]
        target = [tokens.encoded[i] for i in tokens.scorable if i >= args.limit]
        model = load_model(proxy, torch.device("cpu"))
        pool_tokens = sum(len(tokens.encoded[i].input_ids) for i in pool)
        target_tokens = sum(len(item.input_ids) for item in target)
        print(f"proxy {proxy}: {len(pool)} pool records ({pool_tokens} tokens), "
              f"{len(target)} target examples ({target_tokens} tokens), {dtype}, one thread")
        items = [tokens.encoded[i] for i in pool]
        with progress_bars(False) as bars:
            forward = ProxyForward(model, tokenizer, config.collect_batch_size,
                                   torch.device("cpu"), dtype, bars, 2048)
            seconds, columns = measure(forward, tokens.encoded, np.array(pool), items, target,
                                       config.seed, args.repeats)
        np.testing.assert_array_equal(columns["ifd"]["ifd"], columns["ifd+rds"]["ifd"])
        report(seconds, len(pool), target_tokens / pool_tokens)


def measure(forward, encoded, pool, items, target, seed: int, repeats: int):
    """CPU and wall seconds of the whole IFD baseline alone and with RDS+ (`baseline_columns`,
    as `score` runs it), and of RDS+'s parts: PPL(y|x)'s pass plain and with the pooling and
    cosines, and the target examples' own pass; alternating, `repeats` times."""
    units = torch.ones(forward.model.config.hidden_size, len(target))
    work = {
        "ifd": lambda: baseline_columns("ifd", encoded, pool, len(encoded), seed, forward),
        "ifd+rds": lambda: baseline_columns("ifd", encoded, pool, len(encoded), seed,
                                            forward, target),
        "PPL(y|x) pass": lambda: forward._pass("", items),
        "PPL(y|x) pass, pooled": lambda: forward._pass(
            "", items, represent=lambda pooled: unit_rows(pooled) @ units),
        "target pass": lambda: forward._pass("", list(target), represent=lambda p: p),
    }
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in work}
    columns = {}
    for _ in range(repeats):
        for name, run in work.items():
            cpu, wall, columns[name] = timed(run)
            seconds[name].append((cpu, wall))
    return seconds, columns


def report(seconds: dict[str, list[tuple[float, float]]], records: int,
           token_share: float) -> None:
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    for name, runs in seconds.items():
        cpu, wall = median([c for c, _ in runs]), median([w for _, w in runs])
        print(f"{name:22s} CPU s {[round(c, 2) for c, _ in runs]} median {cpu:.2f}; wall s "
              f"median {wall:.2f}" + (f"; {records / cpu:.2f} examples per CPU s"
                                      if name.startswith("ifd") else ""))
    base = median([c for c, _ in seconds["ifd"]])
    extra = median([c for c, _ in seconds["ifd+rds"]])
    pooling = (median([c for c, _ in seconds["PPL(y|x) pass, pooled"]])
               - median([c for c, _ in seconds["PPL(y|x) pass"]]))
    print(f"RDS+ adds {100 * (extra / base - 1):.1f}% CPU time to the IFD pass (parts: the "
          f"target pass {100 * median([c for c, _ in seconds['target pass']]) / base:.1f}%, "
          f"pooling and cosines {100 * pooling / base:.1f}%; target tokens "
          f"{100 * token_share:.1f}% of the pool's)")


if __name__ == "__main__":
    main()
