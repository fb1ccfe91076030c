"""Write the Self-Instruct test set (../shared/data/eval_prompts) as Alpaca JSONL records.

Each task's first instance becomes one record: instruction, input, output. Used by the noise
benchmark in docs/results.md as real Alpaca-style data; the output goes wherever you say (it
is a derived copy of a shared file and is not committed).

    python benchmarks/data/alpaca_from_sinstruct.py \
        ../shared/data/eval_prompts/sinstruct_test_set.jsonl /tmp/sinstruct_alpaca.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def convert(source: Path, target: Path) -> int:
    records = []
    for line in source.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        instance = task["instances"][0]
        records.append({"instruction": task["instruction"], "input": instance["input"],
                        "output": instance["output"]})
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                      encoding="utf-8")
    return len(records)


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])), "records written to", sys.argv[2])
