"""One prepared command that measures gradfilter on a GPU (and runs, tiny, on a CPU in CI).

    PYTHONPATH=src python benchmarks/perf/gpu_check.py --out gpu-out            # on the GPU machine
    PYTHONPATH=src python benchmarks/perf/gpu_check.py --out /tmp/g --tiny --budget-seconds 60

Needs torch, transformers, peft, pyarrow, numpy, click and rich; never `gguf` or `datasets`
unless `--proxy` is a GGUF file or `--data` a Hugging Face dataset. No network, no install.

Part 1, speed (always): a GPT-2-124M-shaped proxy built from its config with random weights
(the cost does not depend on the weights) and synthetic token ids (no tokenizer is needed: the
records are made as ids) whose prompt and response lengths follow Alpaca's (the percentiles
below); the default pipeline (M=4, T=2, batch 16, collection batch 32, bf16 where the GPU has
it) in each collection mode; examples/s, tokens/s, model FLOPs utilisation against the bf16
peak, peak device memory, seconds per phase, and the projected wall time for 52,002 records;
the naive PEFT loop on a small slice for the fused/naive ratio; the IFD forward rate; the bf16
per-example norms against float32 ones at the same adapters (largest relative difference).

Multi-GPU (when the machine has 2 GPUs or more; skipped otherwise): the same pipeline under
torchrun on every GPU (nccl, the layout `score` uses: member groups x data shards), in each
collection mode, on as many records as the one-GPU runs had: examples/s in all and per GPU,
the speed-up over one GPU, and each rank's share of the work (`layout`).

Part 2, quality (when `--proxy` names a real pretrained model that is present, with `--data`;
`--quality-only` skips part 1): `bench noise` as docs/results.md's study runs it (its utilities
and baselines; the four shipped kinds of corruption and the opt-in refusal, shuffle and
boilerplate; max length 256) on as many records of DATA as the remaining budget allows, the
run packed into one archive to study here. `gpu_quality.sh` carries the real SmolLM2 proxy there.

Every part checks the clock (`--budget-seconds`, default 450) and is skipped when the time left
looks too short; results go to OUT/gpu_check.json after every part, so a run cut short still
returns numbers; a one-screen summary is printed at the end (and written to summary.txt).

Alpaca's lengths: the 5,000-record random subset of Alpaca-52k in tatsu-lab/stanford_alpaca
(commit 5e69c50, data/alpaca_5000.json), tokenised with the SmolLM2 tokenizer (a GPT-2-style
byte-level BPE); prompt = gradfilter's plain template `instruction\\n[input\\n]`, response =
`output` + EOS. Percentiles 0/10/25/50/75/90/99/100: prompt 5/9/11/15/22/32/72/238 tokens
(mean 19.0), response 1/8/15/45/87/126/265/588 tokens (mean 59.2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gradfilter.bench.speed import (
    BF16_PEAK_FLOPS,
    fused_path,
    host_peak_mib,
    max_relative_difference,
    naive_path,
    reset_peaks,
)
from gradfilter.config import ScoreConfig
from gradfilter.outputs import atomic_write_text, package_versions
from gradfilter.scoring.baselines import mean_nll, response_alone
from gradfilter.scoring.tokenization import Encoded

PERCENT = (0, 10, 25, 50, 75, 90, 99, 100)
ALPACA_PROMPT = (5, 9, 11, 15, 22, 32, 72, 238)
ALPACA_RESPONSE = (1, 8, 15, 45, 87, 126, 265, 588)
ALPACA_RECORDS = 52_002
GPT2_124M = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
TINY = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=1024)
# Part 2 measures what docs/results.md's study measures: the default, the literal reading, the
# drop and the scale-free variant, against the baselines, on shipped and held-out kinds.
QUALITY_METHODS = ["snr-member-gated", "gsnr", "drop", "gsnr-cv", "ifd", "length", "loss",
                   "random"]
QUALITY_KINDS = ["swap", "truncate", "repeat", "echo", "refusal", "shuffle", "boilerplate"]
PACK_LIMIT = 15 * 2**20


def synthetic_records(n: int, vocab: int, max_length: int, seed: int = 0) -> list[Encoded]:
    """n records of random ids, prompt and response lengths drawn from Alpaca's percentiles
    (linear between them), the response masked as the plain template masks it."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        prompt = max(1, round(np.interp(rng.uniform(0, 100), PERCENT, ALPACA_PROMPT)))
        response = max(1, round(np.interp(rng.uniform(0, 100), PERCENT, ALPACA_RESPONSE)))
        length = min(prompt + response, max_length)
        ids = rng.integers(0, vocab - 1, length)
        mask = np.zeros(length, dtype=bool)
        mask[prompt:] = True
        records.append(Encoded(ids.astype(np.int64), mask, prompt + response > max_length))
    return records


def random_gpt2(shape: dict, device: torch.device) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    from gradfilter.scoring.proxy import prepare_backbone

    torch.manual_seed(0)
    config = GPT2Config(**shape, bos_token_id=shape["vocab_size"] - 1,
                        eos_token_id=shape["vocab_size"] - 1)
    return prepare_backbone(GPT2LMHeadModel(config), device)


class Clock:
    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.monotonic(), budget

    @property
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


class Report:
    """gpu_check.json, rewritten after every part."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out, self.data = out, {**header, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.flush()

    def part(self, name: str, values: dict) -> None:
        self.data["parts"][name] = values
        self.flush()

    def flush(self) -> None:
        atomic_write_text(self.out / "gpu_check.json",
                          json.dumps(self.data, indent=2, default=str) + "\n")


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_FLOPS.items() if k in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def pipeline_part(model, records, config: ScoreConfig, mode: str, device, dtype, params: int,
                  passes: int) -> dict:
    """The default pipeline on `records`: throughput, utilisation, memory, phases, the
    projection to Alpaca-52k."""
    config = replace(config, collect=mode)
    reset_peaks(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    stats = fused_path(copy_model(model), records, config, device, dtype)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(r.input_ids) for r in records)
    row_tokens = tokens * config.members * passes
    peak = peak_flops(device)
    return {
        "records": len(records), "tokens": tokens, "seconds": seconds,
        "examples_per_s": len(records) / seconds, "tokens_per_s": tokens / seconds,
        "row_token_passes_per_s": row_tokens / seconds,
        "mfu": None if peak is None else 4.0 * params * row_tokens / seconds / peak,
        "device_peak_mib": device_peak_mib(device), "host_peak_mib": host_peak_mib(),
        "phase_seconds": stats.phase_seconds, "batch_tokens": stats.batch_tokens,
        "projected_52k_seconds": ALPACA_RECORDS * seconds / len(records),
        "passes_per_example": config.members * passes,
    }


def _passes(config: ScoreConfig, mode: str) -> int:
    """Forward+backward passes per example and member: T epochs, plus 2 collections."""
    return config.epochs + (2 if mode == "snapshot" else 0)


def _sized(report: Report, clock: Clock) -> int:
    """Records for one pipeline run: what 30% of the time left buys at the calibrated rate (of
    the slower mode), between 64 and 8192."""
    rate = report.data["parts"].get("calibration", {}).get("examples_per_s", 1.0)
    return int(min(8192, max(64, rate * 0.3 * clock.left)))


def copy_model(model):
    import copy

    return copy.deepcopy(model)


def precision_part(model, records, config: ScoreConfig, device) -> dict:
    """Per-example squared norms under bf16 autocast against float32, at the same adapters
    (after a few training steps, so that both LoRA factors are non-zero)."""
    from gradfilter.scoring.batching import Batcher
    from gradfilter.scoring.budget import batch_tokens
    from gradfilter.scoring.checkpoint import NullCheckpoint
    from gradfilter.scoring.collection import Collector
    from gradfilter.scoring.distributed import Layout
    from gradfilter.scoring.ensemble import LoRAEnsemble

    if device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return {"skipped": "no bf16 GPU: nothing to compare"}
    ensemble = LoRAEnsemble(copy_model(model), config.members, config.lora_rank,
                            config.lora_alpha, config.targets, config.seed)
    with torch.no_grad():
        for p in ensemble.parameters():
            p.normal_(0, 0.02)
    lengths = np.array([len(r.input_ids) for r in records])
    batcher = Batcher(records, device)
    rows = np.arange(len(records))
    norms = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        budget = batch_tokens(config.batch_tokens, ensemble.model, device, dtype, "gradients")
        collector = Collector(ensemble, batcher, lengths, config, autocast, NullCheckpoint(),
                              Layout(members=config.members), budget)
        _, sqnorms, _ = collector._measure(rows)
        norms[name] = {0: sqnorms.double().cpu().numpy()}
    return {"examples": len(records),
            "max_relative_difference_bf16_vs_fp32": max_relative_difference(
                norms["bfloat16"], norms["float32"])}


def ifd_part(model, records, device, dtype, batch_size: int, start_id: int) -> dict:
    """The forward-only IFD baseline (two passes), micro-batched within the `auto` budget."""
    from gradfilter.scoring.budget import batch_tokens

    budget = batch_tokens(None, model, device, dtype, "forward")
    synchronize(device)
    start = time.perf_counter()
    mean_nll(model, records, batch_size, device, dtype, budget)
    mean_nll(model, [response_alone(r, start_id) for r in records], batch_size, device, dtype,
             budget)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"records": len(records), "seconds": seconds, "batch_tokens": budget,
            "examples_per_s": len(records) / seconds,
            "projected_52k_seconds": ALPACA_RECORDS * seconds / len(records)}


def naive_part(model, records, config: ScoreConfig, device, dtype) -> dict:
    """The naive PEFT loop and the fused path on the same small slice, same settings (the
    snapshot reading, which the naive loop reproduces)."""
    config = replace(config, collect="snapshot")
    timings = {}
    for name, path in (("fused", fused_path), ("naive", naive_path)):
        synchronize(device)
        start = time.perf_counter()
        outputs = path(copy_model(model), records, config, device, dtype)
        synchronize(device)
        timings[name] = (time.perf_counter() - start, outputs)
    fused_norms = timings["fused"][1].sqnorms
    return {"records": len(records), "fused_seconds": timings["fused"][0],
            "naive_seconds": timings["naive"][0],
            "fused_over_naive": timings["naive"][0] / timings["fused"][0],
            "max_relative_difference": max_relative_difference(fused_norms, timings["naive"][1])}


def quality_part(proxy: str, data: str, out: Path, seconds: float, device: str,
                 max_length: int = 256) -> dict:
    """`bench noise` as the study runs it (its utilities and baselines, the four shipped kinds
    of corruption and the opt-in refusal, shuffle and boilerplate) on as many records as
    ~`seconds` allow (measured on a first slice of 64 records, then scaled). OUT gets noise.md
    and the run itself, packed (`noise-run.tar.gz`: results, labels and tables, to study every
    utility afterwards with utility_study.py); the summary goes into the JSON."""
    import tempfile

    from gradfilter.bench.noise import results_markdown, run_noise_benchmark
    from gradfilter.data.dataset import read_dataset

    # No sketches: they would make the tables too large to come back from the device.
    config = ScoreConfig(proxy=proxy, device=device, max_length=max_length, sketch_dim=0)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-noise-"))

    def noise(records: int, directory: str) -> dict:
        return run_noise_benchmark(read_dataset(data, limit=records), scratch / directory, config,
                                   methods=QUALITY_METHODS, corruptions=QUALITY_KINDS,
                                   fraction=0.2, budgets=[0.05, 0.1, 0.15], progress=False,
                                   log=lambda _: None)

    start = time.perf_counter()
    trial = noise(64, "noise-trial")
    per_record = (time.perf_counter() - start) / 64
    # sized to 80% of the time left: a run killed at the call's limit would bring back nothing
    n = int(0.8 * max(0, seconds - (time.perf_counter() - start)) / per_record)
    if n < 128:
        return {"records": 64, "results": trial["summary"], "note": "no time for more"}
    results = noise(n, "noise")
    atomic_write_text(out / "noise.md", results_markdown(results))
    return {"records": results["seeds"]["0"]["records"], "results": results["summary"],
            "packed": pack_run(scratch / "noise", out / "noise-run.tar.gz")}


def pack_run(run: Path, archive: Path) -> str:
    """The noise run's results, labels and tables as one archive small enough to come back
    (16 MiB a file); its mixed sets too where they fit (they can be remade from the data)."""
    import tarfile

    def write(with_mixed: bool) -> None:
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(run.rglob("*")):
                if path.is_file() and (with_mixed or not path.name.startswith("mixed")):
                    tar.add(path, arcname=str(Path(run.name) / path.relative_to(run)))

    write(with_mixed=True)
    if archive.stat().st_size <= PACK_LIMIT:
        return "with the mixed sets"
    write(with_mixed=False)
    if archive.stat().st_size <= PACK_LIMIT:
        return "without the mixed sets"
    archive.unlink()
    return "too large to come back"


def summary_lines(report: dict) -> list[str]:
    lines = [f"gradfilter GPU check on {report['device']} ({report['dtype']}); "
             f"{report['elapsed_seconds']:.0f} s of {report['budget_seconds']:.0f} s"]
    for name, part in report["parts"].items():
        if "error" in part or "skipped" in part:
            lines.append(f"- {name}: {part.get('error') or part.get('skipped')}")
        elif name.startswith("pipeline"):
            mfu = "-" if part["mfu"] is None else f"{part['mfu']:.1%}"
            lines.append(f"- {name}: {part['examples_per_s']:.1f} ex/s, "
                         f"{part['tokens_per_s']:.0f} tok/s, MFU {mfu}, peak "
                         f"{part['device_peak_mib'] or part['host_peak_mib']:.0f} MiB, "
                         f"52k records in {part['projected_52k_seconds'] / 60:.1f} min")
        elif name == "naive":
            lines.append(f"- fused/naive: {part['fused_over_naive']:.1f}x on {part['records']} "
                         f"records (norms agree to {part['max_relative_difference']:.1e})")
        elif name == "ifd":
            lines.append(f"- IFD forward: {part['examples_per_s']:.0f} ex/s, 52k in "
                         f"{part['projected_52k_seconds'] / 60:.1f} min")
        elif name == "precision":
            lines.append(f"- bf16 vs fp32 norms: largest relative difference "
                         f"{part['max_relative_difference_bf16_vs_fp32']:.2e}")
        elif name == "multi_gpu":
            lines.extend(f"- {part['processes']} GPUs, {mode}: {figure['examples_per_s']:.1f} "
                         f"ex/s ({figure['examples_per_s_per_process']:.1f} per GPU), speed-up "
                         f"over one GPU {figure.get('speedup_over_one_gpu', float('nan')):.2f}x"
                         for mode, figure in part["modes"].items())
        elif name == "quality":
            lines.append(f"- quality: bench noise on {part['records']} records (see "
                         f"noise.md; the run packed {part.get('packed', '-')})")
    return lines


def pipeline_config(device: torch.device) -> ScoreConfig:
    """The default pipeline's settings, on the random GPT-2's LoRA targets."""
    return ScoreConfig(proxy="random-gpt2", device=device.type,
                       max_length=512).with_targets(("c_attn", "c_proj", "c_fc"))


def multi_gpu_part(args, report: Report, seconds: float) -> dict:
    """The pipeline on every GPU (torchrun, one process per GPU), on as many records as the
    one-GPU runs: examples/s, per GPU, and the speed-up over one GPU."""
    gpus = torch.cuda.device_count() if args.device != "cpu" and torch.cuda.is_available() else 0
    processes = args.processes or gpus
    if processes < 2:
        return {"skipped": f"{gpus} GPU(s): the multi-GPU case needs 2 or more"}
    records = report.data["parts"].get("pipeline_snapshot", {}).get("records") or args.records
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(processes), str(Path(__file__).resolve()), "--worker",
               "--out", str(args.out), "--records", str(records or 64), "--device", args.device,
               *(["--tiny"] if args.tiny else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=max(10, seconds))
    if result.returncode != 0:
        raise RuntimeError(f"torchrun exited with {result.returncode}: {result.stderr[-1500:]}")
    written = args.out / "multi_gpu.json"
    figures = json.loads(written.read_text())
    written.unlink()  # it goes into gpu_check.json
    for mode, figure in figures["modes"].items():
        one = report.data["parts"].get(f"pipeline_{mode}", {})
        if one.get("records") == figures["records"]:
            figure["speedup_over_one_gpu"] = one["seconds"] / figure["seconds"]
    return figures


def multi_gpu_worker(args) -> None:
    """One torchrun process of the multi-GPU part; rank 0 writes OUT/multi_gpu.json."""
    from gradfilter.scoring.distributed import session
    from gradfilter.scoring.proxy import resolve_device, resolve_dtype

    with session(resolve_device(args.device)) as (comm, device):
        dtype = resolve_dtype("auto", device)
        shape = TINY if args.tiny else GPT2_124M
        model = random_gpt2(shape, device)
        config = pipeline_config(device)
        pool = synthetic_records(args.records, shape["vocab_size"], config.max_length)
        layout = comm.layout(config.members)
        modes, stats = {}, None
        for mode in ("during", "snapshot"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            comm.barrier()
            start = time.perf_counter()
            stats = fused_path(copy_model(model), pool, replace(config, collect=mode), device,
                               dtype, comm, layout)
            synchronize(device)
            comm.barrier()
            seconds = time.perf_counter() - start
            modes[mode] = {"seconds": seconds, "examples_per_s": len(pool) / seconds,
                           "examples_per_s_per_process": len(pool) / seconds / comm.world,
                           "device_peak_mib_rank0": device_peak_mib(device),
                           "phase_seconds": stats.phase_seconds}
        if comm.rank == 0:
            assert stats is not None
            atomic_write_text(args.out / "multi_gpu.json", json.dumps(
                {"processes": comm.world, "records": len(pool), "layout": stats.layout,
                 "modes": modes}, indent=2) + "\n")


def speed_parts(args, report: Report, clock: Clock, device, dtype, shape: dict) -> list:
    """Part 1: (name, seconds it needs, run) for each measurement."""
    model = random_gpt2(shape, device)
    params = sum(p.numel() for p in model.parameters())
    config = pipeline_config(device)
    modes = ["during", "snapshot"]
    pool = synthetic_records(args.records or 8192, shape["vocab_size"], config.max_length)
    size = args.records or (16 if args.tiny else None)
    parts = [("precision", 20, lambda: precision_part(model, pool[:8], config, device))]
    if size is None:  # calibrate on a slice, then size each mode's run to ~30% of the budget
        parts.append(("calibration", 30, lambda: pipeline_part(
            model, pool[:64], config, modes[-1], device, dtype, params, _passes(config,
                                                                               modes[-1]))))
    for mode in modes:
        parts.append((f"pipeline_{mode}", 20, lambda mode=mode: pipeline_part(
            model, pool[:size or _sized(report, clock)], config, mode, device,
            dtype, params, _passes(config, mode))))
    parts.append(("naive", 20, lambda: naive_part(model, pool[:8 if args.tiny else 16], replace(
        config, batch_size=4, collect_batch_size=8), device, dtype)))
    parts.append(("ifd", 5, lambda: ifd_part(model, pool[:size or 2048], device, dtype,
                                             config.collect_batch_size,
                                             shape["vocab_size"] - 1)))
    parts.append(("multi_gpu", 60, lambda: multi_gpu_part(args, report, clock.left - 10)))
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-seconds", type=float, default=450)
    parser.add_argument("--records", type=int, default=None,
                        help="records per pipeline run (default: sized to the budget)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU test)")
    parser.add_argument("--proxy", default=None, help="a real pretrained model, for part 2")
    parser.add_argument("--data", default=None, help="ShareGPT or other data, for part 2")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-length", type=int, default=256,
                        help="part 2's max length (the study's: docs/results.md)")
    parser.add_argument("--quality-only", action="store_true",
                        help="part 2 alone: the whole budget to the noise benchmark")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes of the multi-GPU part (default: one per GPU)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one process of the multi-GPU part, under torchrun
        multi_gpu_worker(args)
        return
    if args.quality_only and not (args.proxy and args.data):
        parser.error("--quality-only needs --proxy and --data")

    from gradfilter.scoring.proxy import resolve_device, resolve_dtype

    clock = Clock(args.budget_seconds)
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    shape = TINY if args.tiny else GPT2_124M
    report = Report(args.out, {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype), "budget_seconds": args.budget_seconds,
        "model": "--proxy alone" if args.quality_only else shape,
        "versions": package_versions(), "alpaca_percentiles": {
            "percent": PERCENT, "prompt": ALPACA_PROMPT, "response": ALPACA_RESPONSE}})
    parts = [] if args.quality_only else speed_parts(args, report, clock, device, dtype, shape)
    if args.proxy and args.data:
        parts.append(("quality", 120, lambda: quality_part(
            args.proxy, args.data, args.out, clock.left - 15, device.type, args.max_length)))
    for name, needs, run in parts:
        if clock.left < needs:
            report.part(name, {"skipped": f"{clock.left:.0f} s left, needs about {needs} s"})
            continue
        try:
            report.part(name, run())
        except Exception as exc:  # a failing part is reported, the rest still run
            report.part(name, {"error": f"{type(exc).__name__}: {exc}",
                               "traceback": traceback.format_exc()[-2000:]})
        report.data["elapsed_seconds"] = args.budget_seconds - clock.left
        report.flush()
    report.data["elapsed_seconds"] = args.budget_seconds - clock.left
    report.flush()
    lines = summary_lines(report.data)
    atomic_write_text(args.out / "summary.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if any("error" in p for p in report.data["parts"].values()) else 0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
