"""A mixed pool with a target inside it, for selecting for a target (`--target-examples`).

`split`: ShareGPT exchanges (Alpaca JSONL, as benchmarks/sharegpt_pairs.py writes them) mixed
with Self-Instruct tasks (the test set of ../shared/data/eval_prompts, one record a task), the
tasks split by a seeded permutation into three disjoint parts: some in the pool, some as the
target examples, the rest as held-out references. Every pool record carries `domain`
(`sharegpt` or `sinstruct`). The outputs are derived copies of shared files, written where you
say, not committed.

    python benchmarks/studies/target_pool.py split runs/sharegpt1000.jsonl \\
        ../shared/data/eval_prompts/sinstruct_test_set.jsonl runs/target-pool

`share`: the share of Self-Instruct records each utility keeps at each budget, from a pool and
its statistics tables (no model; the share in the pool is the random expectation).

    python benchmarks/studies/target_pool.py share runs/target-pool/pool.jsonl \\
        --table runs/target-pool/gsnr.parquet --table runs/target-pool/ifd.parquet \\
        --utilities align,align-snr,align-max,snr-member-gated,ifd,length,random
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import gradfilter as gf
from gradfilter.table import available_utilities


def _alpaca(task: dict) -> dict:
    instance = task["instances"][0]
    return {"instruction": task["instruction"], "input": instance["input"],
            "output": instance["output"]}


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")


def split(sharegpt: Path, sinstruct: Path, out_dir: Path, pool_tasks: int, target_tasks: int,
          seed: int) -> dict[str, int]:
    tasks = [json.loads(line) for line in sinstruct.read_text(encoding="utf-8").splitlines()]
    if pool_tasks + target_tasks >= len(tasks):
        raise SystemExit(f"{len(tasks)} tasks: leave some for the held-out references")
    order = np.random.default_rng(seed).permutation(len(tasks))
    parts = {"pool": order[:pool_tasks], "target": order[pool_tasks:pool_tasks + target_tasks],
             "heldout": order[pool_tasks + target_tasks:]}
    conversations = [{**json.loads(line), "domain": "sharegpt"}
                     for line in sharegpt.read_text(encoding="utf-8").splitlines()]
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = conversations + [{**_alpaca(tasks[i]), "domain": "sinstruct"}
                            for i in sorted(parts["pool"])]
    _write(out_dir / "pool.jsonl", pool)
    for name in ("target", "heldout"):
        _write(out_dir / f"{name}.jsonl", [_alpaca(tasks[i]) for i in sorted(parts[name])])
    return {"pool": len(pool), "pool_sinstruct": len(parts["pool"]),
            "target": len(parts["target"]), "heldout": len(parts["heldout"])}


def share(pool: Path, tables: list[Path], utilities: list[str],
          budgets: list[float]) -> dict[str, dict[str, float]]:
    """Per utility and budget, the share of `sinstruct` records among those kept."""
    domain = np.array([json.loads(line).get("domain") == "sinstruct"
                       for line in pool.read_text(encoding="utf-8").splitlines()])
    loaded = [gf.load_stats(path) for path in tables]
    shares = {"pool": {f"{b:g}": float(domain.mean()) for b in budgets}}
    for utility in utilities:
        table = next((t for t in loaded if utility in available_utilities(t)), None)
        if table is None:
            raise SystemExit(f"no table given offers {utility!r}")
        scores = gf.utility_scores(table, utility)
        shares[utility] = {f"{b:g}": float(domain[gf.select_top(scores, ratio=b).indices].mean())
                           for b in budgets}
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("split")
    make.add_argument("sharegpt", type=Path)
    make.add_argument("sinstruct", type=Path)
    make.add_argument("out_dir", type=Path)
    make.add_argument("--pool-tasks", type=int, default=100)
    make.add_argument("--target-tasks", type=int, default=76)
    make.add_argument("--seed", type=int, default=0)
    count = commands.add_parser("share")
    count.add_argument("pool", type=Path)
    count.add_argument("--table", type=Path, action="append", required=True)
    count.add_argument("--utilities", required=True)
    count.add_argument("--budgets", default="0.05,0.1")
    args = parser.parse_args()
    if args.command == "split":
        print(json.dumps(split(args.sharegpt, args.sinstruct, args.out_dir, args.pool_tasks,
                               args.target_tasks, args.seed)))
    else:
        print(json.dumps(share(args.pool, args.table, args.utilities.split(","),
                               [float(b) for b in args.budgets.split(",")]), indent=1))


if __name__ == "__main__":
    main()
