"""Streaming at scale: `gradfilter inspect`, `select` and `report` on 1M synthetic records.

Writes a synthetic Alpaca JSONL file (a few hundred bytes a record) and a matching statistics
table (the losses and squared norms of 4 members x 2 epochs that `select` computes G-SNR from
and `--stratify clusters` clusters on, the response lengths, a few records unscored, and each
member's and epoch's 128-number gradient sketch as `score` stores them) to a scratch
directory, then runs each command as a child process and reports its wall time and peak
resident memory (from the kernel's accounting of that child, `wait4`), beside the file's size
and the resident memory of a child that only starts the command line.

The synthetic sketches share a common direction (cosine about 0.3 between unrelated records,
as gradients do) and 5% of the records are planted near-duplicates (groups of 2-50 at cosine
about 0.94), so `select --diversity dedup` has work to do.

    python benchmarks/perf/scale_io.py                     # 1M records under /tmp/gradfilter-scale
    python benchmarks/perf/scale_io.py --records 100000 --dir /tmp/x --keep
    python benchmarks/perf/scale_io.py --reuse --keep --only stratify  # the --stratify steps only
    python benchmarks/perf/scale_io.py --reuse --keep --only report    # the report steps only
    python benchmarks/perf/scale_io.py --reuse --keep --only parquet --only hf   # JSONL to Arrow

Not a test: it takes minutes and a few GB of scratch disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from child import measure_child

WORDS = (
    "the", "model", "data", "answer", "question", "list", "explain", "write", "short", "story",
    "about", "health", "water", "energy", "city", "river", "music", "history", "number",
    "code", "function", "value", "error", "example", "people", "simple", "clear", "because",
    "first", "second", "third", "light", "sound", "table", "chair", "window", "garden",
    "travel", "school", "market", "summer", "winter", "bright", "quiet", "quick", "careful",
    "gentle", "ancient",
)
CLI = [sys.executable, "-c", "from gradfilter.cli import main; main()"]


def sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def write_jsonl(path: Path, n: int, seed: int = 0) -> None:
    """Alpaca records: a one-sentence instruction, an input on a third of them, a few-sentence
    output, and a few non-ASCII characters; about 450 bytes each."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            record = {
                "instruction": f"{sentence(rng, 10)} (#{i})",
                "input": sentence(rng, 12) + " café" if i % 3 == 0 else "",
                "output": " ".join(sentence(rng, rng.randint(8, 14)) for _ in range(5)),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_stats(path: Path, n: int, members: int = 4, sketch_dim: int = 128,
                seed: int = 0) -> None:
    """A statistics table as `score` writes one, reduced to what `select` reads: index,
    response lengths, losses, squared gradient norms and sketches of `members` members at
    epochs 1-2; every 1000th record unscored. Written one row group (64k rows) at a time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradfilter.table import sketch_columns

    rng = np.random.default_rng(seed)
    common = rng.standard_normal((members, sketch_dim))
    common *= np.sqrt(sketch_dim) / np.linalg.norm(common, axis=1, keepdims=True)
    meta = {"early": 1, "late": 2, "members": members}
    writer = None
    for start in range(0, n, 1 << 16):
        rows = np.arange(start, min(n, start + (1 << 16)))
        columns = {"index": pa.array(rows),
                   "n_response_tokens": pa.array(rng.integers(1, 512, len(rows)),
                                                 type=pa.int32())}
        for epoch, scale in ((1, 2.0), (2, 1.0)):
            for member in range(members):
                values = rng.gamma(2.0, scale, len(rows))
                values[rows % 1000 == 0] = np.nan
                columns[f"sqnorm_e{epoch}_m{member}"] = pa.array(values)
                columns[f"loss_e{epoch}_m{member}"] = pa.array(
                    rng.gamma(4.0, scale / 2, len(rows)) + np.where(rows % 1000 == 0, np.nan, 0))
        scorable = np.flatnonzero(rows % 1000 != 0)
        source = planted_sources(rng, len(rows))
        for epoch in (1, 2):
            for member in range(members):
                own = rng.standard_normal((len(rows), sketch_dim))
                noise = rng.standard_normal((len(rows), sketch_dim))
                sketches = own[source] + 0.7 * common[member] + 0.3 * noise
                for name, column in sketch_columns(sketches[scorable].astype(np.float32),
                                                   scorable, len(rows)).items():
                    columns[f"{name}_e{epoch}_m{member}"] = column
        table = pa.table(columns).replace_schema_metadata({"gradfilter": json.dumps(meta)})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=1 << 16)
    if writer is not None:
        writer.close()


def planted_sources(rng, n: int):
    """Each row's source of direction: itself, or for 5% of the rows (in groups of 2-50 at
    random places) the first row of its group."""
    import numpy as np

    source = np.arange(n)
    planted = rng.permutation(n)[: n // 20]
    start = 0
    while start < len(planted):
        group = planted[start:start + int(rng.integers(2, 51))]
        source[group] = group[0]
        start += len(group)
    return source


def stratify_steps(data: Path, stats: Path, where: Path) -> list[tuple[str, list[str]]]:
    """`select --stratify` at the same budget: by response length, by clusters of the
    trajectories, and by clusters of the trajectories and the sketches."""
    base = [*CLI, "select", str(data), "--stats", str(stats), "--ratio", "0.1", "--no-report"]
    return [
        ("select --ratio 0.1 --stratify length", [
            *base, "--stratify", "length", "--out", str(where / "subset-length.jsonl")]),
        ("select --ratio 0.1 --stratify clusters", [
            *base, "--stratify", "clusters", "--out", str(where / "subset-clusters.jsonl")]),
        ("select --ratio 0.1 --stratify clusters (trajectory+sketch)", [
            *base, "--stratify", "clusters", "--cluster-features", "trajectory+sketch",
            "--out", str(where / "subset-clusters-sketch.jsonl")]),
    ]


def _generate(args: argparse.Namespace) -> None:
    """Write the data and the table in a child: this process stays small, and a child inherits
    its parent's peak RSS (Linux carries it across fork and exec), which would hide the
    commands' own."""
    subprocess.run([sys.executable, __file__, "--generate", "--records", str(args.records),
                    "--dir", str(args.dir)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/gradfilter-scale"))
    parser.add_argument("--keep", action="store_true", help="Keep the scratch files.")
    parser.add_argument("--reuse", action="store_true",
                        help="Use the files an earlier --keep run left in --dir.")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="Run only the steps whose name holds TEXT, or with a final '*' "
                             "those whose names start with TEXT without it (repeatable; the "
                             "start-up step always runs).")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    data, stats = args.dir / "data.jsonl", args.dir / "stats.parquet"
    if args.generate:
        write_jsonl(data, args.records)
        write_stats(stats, args.records)
        return
    start = time.perf_counter()
    if not (args.reuse and data.is_file() and stats.is_file()):  # else an earlier --keep's
        _generate(args)
    made = time.perf_counter() - start
    size_mib = data.stat().st_size / 2**20
    per_record = data.stat().st_size / args.records
    print(f"{args.records} records, {size_mib:.0f} MiB JSONL ({per_record:.0f} bytes a record), "
          f"statistics table {stats.stat().st_size / 2**20:.0f} MiB "
          f"({stats.stat().st_size / args.records / 4:.0f} bytes a record and member); "
          f"generated in {made:.0f} s")
    subset, page = args.dir / "subset.jsonl", args.dir / "report.html"
    steps = [
        ("start the command line only", [*CLI, "--version"]),
        ("inspect", [*CLI, "inspect", str(data)]),
        ("select --ratio 0.1", [*CLI, "select", str(data), "--stats", str(stats), "--ratio",
                                "0.1", "--out", str(subset), "--no-report"]),
        ("select --ratio 0.1 --order score", [*CLI, "select", str(data), "--stats", str(stats),
                                              "--ratio", "0.1", "--order", "score", "--out",
                                              str(args.dir / "subset-by-score.jsonl"),
                                              "--no-report"]),
        ("select --ratio 0.1 --diversity dedup (0.9)", [
            *CLI, "select", str(data), "--stats", str(stats), "--ratio", "0.1", "--diversity",
            "dedup", "--diversity-threshold", "0.9", "--out",
            str(args.dir / "subset-dedup.jsonl"), "--no-report"]),
        *stratify_steps(data, stats, args.dir),
        ("report --ratio 0.1", [*CLI, "report", str(stats), "--data", str(data), "--ratio",
                                "0.1", "--out", str(page)]),
        ("select --ratio 0.1 and its report", [
            *CLI, "select", str(data), "--stats", str(stats), "--ratio", "0.1", "--out",
            str(args.dir / "subset-reported.jsonl"), "--report", str(page)]),
        *((f"select --ratio {ratio} --out-format {container}", [
            *CLI, "select", str(data), "--stats", str(stats), "--ratio", ratio, "--out-format",
            container, "--out", str(args.dir / f"subset-{ratio}.{container}"), "--no-report"])
          for container in ("parquet", "hf") for ratio in ("0.1", "0.9")),
    ]
    steps = [(name, argv) for name, argv in steps if name == steps[0][0] or not args.only or any(
        text[:-1] == name[:len(text) - 1] if text.endswith("*") else text in name
        for text in args.only)]
    results = []
    for k, (name, argv) in enumerate(steps):
        child = measure_child(name, argv, args.dir / f"step{k}.log")
        results.append({"step": name, "wall_s": round(child["wall_s"], 1),
                        "cpu_s": round(child["user_s"] + child["system_s"], 1),
                        "peak_rss_mib": round(child["peak_rss_mib"])})
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"{'step':<58}{'wall s':>8}{'CPU s':>8}{'peak RSS MiB':>14}{'of file size':>14}")
    for row in results:
        share = row["peak_rss_mib"] / size_mib
        print(f"{row['step']:<58}{row['wall_s']:>8}{row['cpu_s']:>8}{row['peak_rss_mib']:>14}"
              f"{share:>13.0%}")
    print(f"this script's own peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    summary = {"records": args.records, "file_mib": round(size_mib), "steps": results}
    if subset.is_file():
        with open(subset, encoding="utf-8") as handle:
            kept = sum(1 for _ in handle)
        print(f"subset: {kept} records, {subset.stat().st_size / 2**20:.0f} MiB")
    if page.is_file():
        summary["report_bytes"] = page.stat().st_size
        print(f"report page: {page.stat().st_size / 2**20:.2f} MiB")
    dedup_record = args.dir / "subset-dedup.jsonl.run.json"
    if dedup_record.is_file():
        dedup = json.loads(dedup_record.read_text())["diversity"]
        print(f"dedup: removed {dedup['removed']} of {dedup['processed']} looked at, "
              f"{dedup['comparisons']} pairs compared, {dedup['bits']} bits x "
              f"{dedup['tables']} tables, {dedup['capped_lookups']} capped lookups, "
              f"{dedup['pool_reads']} pool reads")
        summary["dedup"] = {k: v for k, v in dedup.items() if k != "groups"}
    for name in ("clusters", "clusters-sketch"):
        record = args.dir / f"subset-{name}.jsonl.run.json"
        if record.is_file():
            strata = json.loads(record.read_text())["stratify"]
            taken = [s["taken"] for s in strata["strata"]]
            print(f"{name}: K = {strata['k']}, {strata['algorithm']}, {strata['clustered']} "
                  f"records clustered, {strata['empty_clusters']} empty clusters, taken "
                  f"{min(taken)}-{max(taken)} a cluster, {strata['taken_whole']} taken whole")
            summary[name] = {k: v for k, v in strata.items() if k != "strata"}
    print(json.dumps(summary))
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
