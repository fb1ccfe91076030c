"""A fine-tune verdict split by the held-out records' answer length: is a subset's lead over
random on the short answers or on the long ones?

    python benchmarks/studies/finetune_by_answer_length.py FT_DIR DATA [--cut 100] [--reading auc]

FT_DIR is a `bench finetune --from-noise` output (its held-out records are records of the pool
DATA, the noise benchmark's mixed-s0.jsonl); the answer of a record is its answering turns'
characters, as the report pages count them. The split is chosen after the runs: its intervals
describe the runs, they are no pre-declared test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from trend import cell
from trend_finetune import run_losses

from gradfilter.bench.finetune_measures import difference, read
from gradfilter.data.conversations import answering_turns
from gradfilter.data.dataset import read_dataset
from gradfilter.errors import GradfilterError


def answer_chars(data: Path, positions: list[int]) -> np.ndarray:
    dataset = read_dataset(data)
    chars = []
    for i in positions:
        turns = dataset.turns(dataset.records[i])
        chars.append(sum(len(turns[k].text) for k in answering_turns(turns)))
    return np.array(chars)


def split_differences(ft_dir: Path, data: Path, cut: int, reading: str) -> dict:
    """Per row, its difference from random under `reading`, over the held-out records with
    answers shorter than `cut` characters and over the rest."""
    results = json.loads((ft_dir / "results.json").read_text())
    held_out = results["held_out_records"]
    if not held_out:
        raise GradfilterError(f"{ft_dir}: its held-out references are a file, not pool records")
    chars = answer_chars(data, held_out)
    groups = {"short": np.flatnonzero(chars < cut), "long": np.flatnonzero(chars >= cut)}
    values = {row: read(losses, reading) for row, losses in run_losses(ft_dir, results).items()}
    out: dict = {"cut": cut, "reading": reading,
                 "records": {g: len(ix) for g, ix in groups.items()}, "rows": {}}
    for row, v in values.items():
        if row == "random":
            continue
        out["rows"][row] = {g: difference(v[..., ix], values["random"][..., ix]).as_dict()
                            if len(ix) else None for g, ix in groups.items()}
    return out


def markdown(result: dict) -> str:
    n = result["records"]
    lines = [f"| row | {result['reading']} - random, answers < {result['cut']} chars "
             f"({n['short']}) | answers >= {result['cut']} chars ({n['long']}) |",
             "| --- | --- | --- |"]
    for row, cells in result["rows"].items():
        lines.append(f"| {row} | {cell(cells['short'], 4)} | {cell(cells['long'], 4)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ft_dir", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--cut", type=int, default=100)
    parser.add_argument("--reading", choices=("auc", "final"), default="auc")
    args = parser.parse_args()
    try:
        result = split_differences(args.ft_dir, args.data, args.cut, args.reading)
    except (GradfilterError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(markdown(result))


if __name__ == "__main__":
    main()
