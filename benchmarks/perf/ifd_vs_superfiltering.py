"""gradfilter's IFD against Superfiltering's own loop, same records, same model, in turn.

    python benchmarks/perf/ifd_vs_superfiltering.py /tmp/sinstruct_alpaca.jsonl --limit 100

runs, one after the other, as a user would (each a fresh process: imports, model load,
tokenising and scoring all counted):

- gradfilter: `gradfilter score DATA --method ifd --proxy MODEL --max-length L` with every
  other flag at its default;
- superfiltering: `benchmarks/perf/superfiltering_loop.py`, Superfiltering's published method
  reimplemented from its description (two forward passes per example, one example at a time,
  the model's own loss over full logits), in float32 as their script loads the model, or
  with `--superfiltering-dtype bfloat16` to compare at equal precision where gradfilter's
  `--dtype auto` picks bfloat16 (a CPU with AMX).

Both read the same first `--limit` Alpaca records and the same Hugging Face model directory
(`--model`; a `.gguf` file, the default being the demo's SmolLM2-135M-Instruct, is converted
once into a directory beside the data, as Superfiltering's script needs one). Each child's wall
time and peak RSS come from the kernel (`wait4`); on a GPU the device's peak memory is read too.
It prints wall time, examples/s, peak memory, the speed ratio, the tokens each side ran, and the
Spearman correlation of the two sides' IFD (they differ by template: gradfilter's default uses
the proxy's chat template, Superfiltering its plain `instruction\\ninput\\n` prompt).
`--rounds 2` alternates the order (gradfilter first, then superfiltering first) and reports
each round. Not a test: minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from child import measure_child

HERE = Path(__file__).parent


def hf_directory(model: str, scratch: Path) -> str:
    """`model` itself if it is a directory; a `.gguf` converted (in a child process, so that
    this one stays small: a child inherits its parent's peak RSS) into `scratch`."""
    if not model.endswith(".gguf"):
        return model
    target = scratch / (Path(model).stem + "-hf")
    if not (target / "config.json").is_file():
        code = (
            "import sys, torch\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "path, target = sys.argv[1], sys.argv[2]\n"
            "folder, name = path.rsplit('/', 1)\n"
            "model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, "
            "dtype=torch.float32)\n"
            "model.hf_quantizer = None\n"
            "model.config.__dict__.pop('quantization_config', None)\n"
            "model.save_pretrained(target)\n"
            "AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(target)\n"
        )
        subprocess.run([sys.executable, "-c", code, str(Path(model).resolve()), str(target)],
                       check=True, capture_output=True)
    return str(target)


def first_records(data: Path, limit: int, target: Path) -> Path:
    """The first `limit` records of a JSONL or JSON-array file, as JSONL."""
    text = data.read_text(encoding="utf-8")
    records = (json.loads(text) if text.lstrip().startswith("[") else
               [json.loads(line) for line in text.splitlines() if line.strip()])
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                              for r in records[:limit]), encoding="utf-8")
    return target


def spearman(a: list[float], b: list[float]) -> float:
    import numpy as np

    ranks = [np.argsort(np.argsort(np.asarray(x), kind="stable"), kind="stable") for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def gradfilter_side(records: Path, model: str, args: argparse.Namespace, work: Path,
                    run: int) -> dict:
    out = work / f"gradfilter-{run}.parquet"
    argv = [sys.executable, "-m", "gradfilter", "score", str(records), "--method", "ifd",
            "--proxy", model, "--max-length", str(args.max_length), "--out", str(out),
            "--quiet", *args.gradfilter_args.split()]
    result = measure_child("gradfilter", argv, work / f"gradfilter-{run}.log")
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    record = json.loads(out.with_name(out.name + ".run.json").read_text())
    result["ifd"] = table.column("ifd_ratio").to_pylist()
    result["tokens"] = record.get("forward_tokens")
    result["batch_tokens"] = record.get("batch_tokens")
    result["dtype"] = record.get("dtype")
    result["device_peak_mib"] = record.get("device_peak_mib")
    return result


def superfiltering_side(records: Path, model: str, args: argparse.Namespace, work: Path,
                        run: int) -> dict:
    out = work / f"superfiltering-{run}.jsonl"
    argv = [sys.executable, str(HERE / "superfiltering_loop.py"), str(records), "--model",
            model, "--max-length", str(args.max_length), "--out", str(out)]
    if args.device != "auto":
        argv += ["--device", args.device]
    argv += ["--dtype", args.superfiltering_dtype]
    result = measure_child("superfiltering", argv, work / f"superfiltering-{run}.log")
    result["dtype"] = f"torch.{args.superfiltering_dtype}"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rows = [line for line in lines if "index" in line]
    result["ifd"] = [row["ifd"] for row in rows]
    result["tokens"] = sum(row["tokens"] for row in rows)
    result["device_peak_mib"] = next((line["device_peak_mib"] for line in lines
                                      if "device_peak_mib" in line), None)
    return result


def report(rounds: list[list[dict]], examples: int) -> dict:
    print(f"{'round':<7}{'side':<16}{'wall s':>8}{'examples/s':>12}{'peak RSS MiB':>14}"
          f"{'device MiB':>12}{'user s':>8}{'sys s':>7}")
    ratios = []
    for k, sides in enumerate(rounds, 1):
        for side in sides:
            device = side["device_peak_mib"]
            print(f"{k:<7}{side['name']:<16}{side['wall_s']:>8.1f}"
                  f"{examples / side['wall_s']:>12.2f}{side['peak_rss_mib']:>14.0f}"
                  f"{'-' if device is None else f'{device:.0f}':>12}{side['user_s']:>8.1f}"
                  f"{side['system_s']:>7.1f}")
        by_name = {side["name"]: side for side in sides}
        ratios.append(by_name["superfiltering"]["wall_s"] / by_name["gradfilter"]["wall_s"])
    sides = {side["name"]: side for side in rounds[-1]}
    both = [(a, b) for a, b in zip(sides["gradfilter"]["ifd"], sides["superfiltering"]["ifd"],
                                   strict=True) if a is not None and b is not None]
    rho = spearman(*zip(*both, strict=True)) if len(both) > 2 else float("nan")
    print("gradfilter speed-up (superfiltering wall / gradfilter wall): "
          + ", ".join(f"{r:.2f}x" for r in ratios))
    print(f"tokens through the two forward passes: gradfilter {sides['gradfilter']['tokens']}, "
          f"superfiltering {sides['superfiltering']['tokens']}; gradfilter's micro-batch "
          f"budget: {sides['gradfilter']['batch_tokens']} tokens")
    print(f"dtypes: gradfilter {sides['gradfilter']['dtype']}, superfiltering "
          f"{sides['superfiltering']['dtype']}")
    print(f"Spearman correlation of the two IFDs over {len(both)} records: {rho:.3f}")
    return {"examples": examples, "ratios": ratios, "spearman": rho,
            "rounds": [[{k: v for k, v in side.items() if k != "ifd"} for side in sides_]
                       for sides_ in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="Alpaca records (JSONL or a JSON array).")
    parser.add_argument("--model", default=None,
                        help="HF model directory or .gguf (default: the demo's SmolLM2).")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--superfiltering-dtype", choices=["float32", "bfloat16"],
                        default="float32",
                        help="Superfiltering's weights (default float32, as their script).")
    parser.add_argument("--gradfilter-args", default="",
                        help="Extra flags for gradfilter score (default: none).")
    parser.add_argument("--work", type=Path, default=None,
                        help="Keep the scores and logs here (default: a temporary directory).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    if args.device != "auto":
        args.gradfilter_args += f" --device {args.device}"
    model = args.model
    if model is None:
        from gradfilter.demo import demo_config  # no torch imported

        model = demo_config().proxy
    with tempfile.TemporaryDirectory(prefix="ifd-bench-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        model = hf_directory(model, Path(tempfile.gettempdir()))
        records = first_records(args.data, args.limit, work / "records.jsonl")
        examples = sum(1 for _ in records.open())
        print(f"{examples} records of {args.data}, model {model}, max length "
              f"{args.max_length}; {platform.platform()}, {os.cpu_count()} CPUs")
        rounds = []
        for k in range(args.rounds):
            sides = [gradfilter_side, superfiltering_side]
            if k % 2:
                sides.reverse()
            rounds.append([side(records, model, args, work, k) for side in sides])
        figures = report(rounds, examples)
    if args.out is not None:
        args.out.write_text(json.dumps({"model": model, "max_length": args.max_length,
                                        **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
