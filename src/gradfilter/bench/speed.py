"""`gradfilter bench speed`: the fused path against the loop a user would write, and IFD.

(a) fused: gradfilter's own scoring (M members as one batched model, per-example norms from
    one backward per batch), in snapshot mode: the reading the naive loop reproduces;
(b) naive: what a user writes with `peft` and a loop: each member trained on its own PEFT
    model (logits at every position, as the model's forward gives them), then one
    `backward()` of the model's own loss per example and member in each collection pass,
    squared norms summed over the LoRA gradients;
(c) ifd: the forward-only IFD baseline (two forward passes per example);
(d) during / snapshot: the fused path with `--collect during` (statistics from the training
    passes themselves) or `--collect snapshot` (two extra collection passes); with both, the
    throughput ratio and how far the two modes' utilities agree (Spearman's rank correlation,
    overlap of the top 10%);
(e) <path>+target (fused, during or snapshot): the same path with target examples (`score
    --target-examples`: a target pass after epochs s and t); with the plain path beside it,
    the overhead ratio and the seconds of the target passes.

All three run in one process on the same tokenised data and proxy. Each path's wall time
counts only its own work (the proxy is loaded before), and its peak memory is the process's
high-water mark during that path (Linux: reset through /proc/self/clear_refs).

Under torchrun the gradient paths (fused, during, snapshot) run on all W processes in the
layout `score` uses (member groups x data shards), then on rank 0 alone while the others wait:
examples/s in all and per process, and the speed-up from 1 to W processes. The naive and IFD
paths run on rank 0 alone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ScoreConfig
from ..errors import GradfilterError
from ..progress import progress_bars
from ..scoring.baselines import ProxyForward
from ..scoring.batching import Batcher, member_batches
from ..scoring.budget import batch_tokens
from ..scoring.collection import GradientStatistics, train_and_collect
from ..scoring.distributed import Comm, Layout, session
from ..scoring.ensemble import LoRAEnsemble, linear_warmup_decay
from ..scoring.proxy import (
    default_targets,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from ..scoring.tokenization import Encoded
from ..scoring.trainer import WARMUP_RATIO
from ..utilities import compute_utilities

BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
GRADIENT_PATHS = ("fused", "during", "snapshot")  # the paths that run on every process
TARGETED = "+target"  # a gradient path's name with this suffix: the same path with a target
PATHS = ("fused", "naive", "ifd", "during", "snapshot",
         *(f"{name}{TARGETED}" for name in GRADIENT_PATHS))


def speed_paths(names: list[str], has_target: bool) -> tuple[str, ...]:
    """The paths to time, checked: known names, and '+target' ones exactly when there are
    target examples."""
    unknown = [name for name in names if name not in PATHS]
    if unknown or not names:
        raise GradfilterError(f"--paths: unknown path(s) {unknown}; choose from {list(PATHS)}")
    targeted = [name for name in names if name.endswith(TARGETED)]
    if targeted and not has_target:
        raise GradfilterError(f"--paths {','.join(targeted)} need --target-examples")
    if has_target and not targeted:
        raise GradfilterError("--target-examples is used by the +target paths; name one in "
                              "--paths (e.g. during,during+target)")
    return tuple(names)


def gradient_base(name: str) -> str | None:
    """The gradient path `name` runs ('during' for 'during+target'), None for naive and ifd."""
    base = name.removesuffix(TARGETED)
    return base if base in GRADIENT_PATHS else None


@dataclass
class PathTiming:
    name: str
    seconds: float
    examples: int
    tokens: int
    host_peak_mib: float
    device_peak_mib: float | None
    row_tokens: int  # tokens through the backbone, counting every member's copy
    processes: int = 1
    # this process's CPU time (all its threads): on a shared machine, steadier than the wall
    cpu_seconds: float = 0.0

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds

    @property
    def examples_per_s_per_process(self) -> float:
        return self.examples_per_s / self.processes

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def reset_peaks(device: torch.device) -> None:
    """Restart the host (VmHWM) and device high-water marks."""
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():
        clear_refs.write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def host_peak_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(name: str, work: Callable[[], object], encoded: list[Encoded], row_tokens: int,
             device: torch.device, comm: Comm | None = None) -> tuple[PathTiming, object]:
    """`work` timed; with `comm`, on all its processes together, from a common start to the
    last one's end."""
    comm = comm or Comm()
    reset_peaks(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    comm.barrier()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    comm.barrier()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    device_peak = (torch.cuda.max_memory_allocated(device) / 2**20
                   if device.type == "cuda" else None)
    tokens = sum(len(item.input_ids) for item in encoded)
    return PathTiming(name, seconds, len(encoded), tokens, host_peak_mib(), device_peak,
                      row_tokens, comm.world, cpu_seconds), result


def rank_agreement(a: np.ndarray, b: np.ndarray, top: float = 0.1) -> dict[str, float]:
    """Spearman's rank correlation (ordinal ranks: continuous scores have no ties) and the
    share of the top `top` fraction (highest first, ties by position, as `select` ranks)
    that the two orders have in common."""
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable") for x in (a, b)]
    k = max(1, int(np.floor(top * len(a) + 0.5)))
    first, second = (set(np.argsort(-x, kind="stable")[:k].tolist()) for x in (a, b))
    return {"spearman": float(np.corrcoef(*ranks)[0, 1]), "top_overlap": len(first & second) / k}


def mode_agreement(during: GradientStatistics, snapshot: GradientStatistics,
                   config: ScoreConfig) -> dict[str, dict[str, float]]:
    """Per utility, how far the during and snapshot rankings agree."""
    utilities = [compute_utilities(stats.sqnorms[config.early], stats.sqnorms[config.late])
                 for stats in (during, snapshot)]
    return {name: rank_agreement(utilities[0][name], utilities[1][name])
            for name in utilities[0]}


def fused_path(model, encoded, config: ScoreConfig, device, dtype, comm: Comm | None = None,
               layout: Layout | None = None,
               target: list[Encoded] | None = None) -> GradientStatistics:
    """gradfilter's scoring on an already loaded backbone (this rank's part of it, with
    `comm` and `layout`; with `target`, the target passes too)."""
    layout = layout or Layout(members=config.members)
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.lora_targets, config.seed, member_ids=layout.local_members)
    scorable = np.arange(len(encoded))
    return train_and_collect(ensemble, encoded, scorable, config, device, dtype, progress=False,
                             comm=comm, layout=layout, target=target)


def naive_path(model, encoded, config: ScoreConfig, device, dtype) -> dict[int, np.ndarray]:
    """One PEFT model per member, trained alone; one backward per example to collect."""
    # The same initial adapters as the fused path, so the two can be compared number for number.
    initial = LoRAEnsemble(copy.deepcopy(model), config.members, config.lora_rank,
                           config.lora_alpha, config.lora_targets, config.seed)
    per_member = [_naive_member(model, initial, m, encoded, config, device, dtype)
                  for m in range(config.members)]
    return {e: np.stack([member[e] for member in per_member], axis=1) for e in per_member[0]}


def _naive_member(model, initial: LoRAEnsemble, m: int, encoded, config: ScoreConfig, device,
                  dtype) -> dict[int, np.ndarray]:
    """Member m on its own PEFT copy: its squared norms per example at each collected epoch."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(config.lora_targets), fan_in_fan_out=initial.uses_conv1d)
    peft_model = get_peft_model(copy.deepcopy(model), lora)
    set_peft_model_state_dict(peft_model, initial.member_state(m))
    network = peft_model.get_base_model()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps = -(-len(encoded) // config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_warmup_decay(config.epochs * steps, WARMUP_RATIO))
    batcher = Batcher(encoded, device)
    lengths = np.array([len(item.input_ids) for item in encoded])
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    sqnorms = {}
    for epoch in range(1, config.epochs + 1):
        for rows in member_batches(lengths, config.batch_size, config.members, config.seed,
                                   epoch, config.length_bucketing)[m]:
            with autocast:
                loss = full_logits_losses(network, batcher.batch([rows])).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        if epoch in (config.early, config.late):
            sqnorms[epoch] = np.array([_one_example_sqnorm(network, batcher.batch([[i]]), params,
                                                           autocast)
                                       for i in range(len(encoded))])
    return sqnorms


def _one_example_sqnorm(network, batch, params, autocast) -> float:
    """One `backward()` of the model's own loss for one example; its LoRA gradient's norm^2."""
    labels = batch.input_ids.masked_fill(~batch.response_mask, -100)
    with autocast:
        loss = network(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       labels=labels).loss
    loss.backward()
    value = float(sum(p.grad.float().pow(2).sum() for p in params))
    for p in params:
        p.grad = None
    return value


def full_logits_losses(network, batch) -> torch.Tensor:
    """Each row's mean response cross-entropy the usual way: logits at every position."""
    logits = network(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    targets = batch.input_ids[:, 1:].masked_fill(~batch.response_mask[:, 1:], -100)
    tokens = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return tokens.sum(1) / (targets != -100).sum(1)


def ifd_path(model, tokenizer, encoded, config: ScoreConfig, device, dtype) -> np.ndarray:
    budget = batch_tokens(config.batch_tokens, model, device, dtype, "forward")
    with progress_bars(False) as bars:
        forward = ProxyForward(model, tokenizer, config.collect_batch_size, device, dtype, bars,
                               budget)
        return np.exp(forward(encoded)) / np.exp(forward(encoded, response_only=True))


def max_relative_difference(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[e] - b[e]) / np.maximum(np.abs(b[e]), 1e-30))) for e in a)


def utilisation(timing: PathTiming, flops_per_token: float, device: torch.device) -> float | None:
    """Model FLOPs per second over the device's bf16 dense peak (GPU only)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    return flops_per_token * timing.row_tokens / timing.seconds / peak


def run_speed_benchmark(encoded: list[Encoded], config: ScoreConfig, paths: tuple[str, ...],
                        log=print, member_groups: int | None = None,
                        target: list[Encoded] | None = None) -> dict:
    """Time each requested path (`PATHS`) on `encoded`, the '+target' ones with the target
    examples `target`; figures as a dict (on rank 0; an empty one on the other ranks under
    torchrun)."""
    with session(resolve_device(config.device)) as (comm, device):
        return _speed_benchmark(encoded, config, paths, log if comm.rank == 0 else _silent,
                                comm, comm.layout(config.members, member_groups), device,
                                target or [])


def _silent(_: str) -> None:
    pass


def _on_rank0(comm: Comm, work: Callable[[], tuple[PathTiming, object]]
              ) -> tuple[PathTiming | None, object]:
    """`work` on rank 0 alone, the other ranks waiting for it."""
    result: tuple[PathTiming | None, object] = work() if comm.rank == 0 else (None, None)
    comm.barrier()
    return result


def _speed_benchmark(encoded: list[Encoded], config: ScoreConfig, paths: tuple[str, ...],
                     log: Callable[[str], None], comm: Comm, layout: Layout,
                     device: torch.device, target: list[Encoded]) -> dict:
    dtype = resolve_dtype(config.dtype, device)
    forward_dtype = resolve_dtype(config.dtype, device, "forward")
    tokenizer = load_tokenizer(config.proxy)
    model = load_model(config.proxy, device)
    config = config.with_targets(default_targets(model))
    params = sum(p.numel() for p in model.parameters())
    tokens = sum(len(item.input_ids) for item in encoded)
    # Every training epoch and collection pass runs each member's copy of every example.
    gradient_row_tokens = tokens * config.members * (config.epochs + 2)
    # Frozen backbone: forward 2P and input-gradient backward 2P per token.
    flops = {"fused": 4.0 * params, "naive": 4.0 * params, "ifd": 2.0 * params,
             "during": 4.0 * params, "snapshot": 4.0 * params}
    row_tokens = {"fused": gradient_row_tokens, "naive": gradient_row_tokens,
                  "ifd": tokens + sum(int(item.response_mask.sum()) + 1 for item in encoded),
                  "snapshot": gradient_row_tokens,
                  "during": tokens * config.members * config.epochs}
    # a target pass after epochs s and t: every member's copy of every target example
    target_row_tokens = sum(len(item.input_ids) for item in target) * config.members * 2
    for base in GRADIENT_PATHS:
        flops[base + TARGETED] = flops[base]
        row_tokens[base + TARGETED] = row_tokens[base] + target_row_tokens
    timings, outputs, scaling = {}, {}, {}
    for name in paths:
        log(f"{name}: running on {len(encoded)} examples ({tokens} tokens)"
            + (f", {len(target)} target examples" if name.endswith(TARGETED) else ""))
        base = gradient_base(name)
        # fused: the snapshot reading, the one the naive loop reproduces
        gradient = replace(config, collect="snapshot" if base == "fused" else base or "during")
        targets = target if name.endswith(TARGETED) else None
        if base is not None and comm.distributed:
            timings[name], outputs[name] = measured(
                name, partial(fused_path, copy.deepcopy(model), encoded, gradient, device,
                              dtype, comm, layout, targets), encoded, row_tokens[name], device,
                comm)
            log(f"{name}: {timings[name].seconds:.1f} s on {comm.world} processes")
            alone, _ = _on_rank0(comm, lambda gradient=gradient, name=name, targets=targets:
                                 measured(name, partial(fused_path, copy.deepcopy(model),
                                                        encoded, gradient, device, dtype,
                                                        target=targets),
                                          encoded, row_tokens[name], device))
            if alone is not None:
                scaling[name] = {"processes": comm.world, "one_process_seconds": alone.seconds,
                                 "seconds": timings[name].seconds,
                                 "speedup": alone.seconds / timings[name].seconds}
                log(f"{name}: {alone.seconds:.1f} s on 1 process")
            continue
        if base is not None:
            work = partial(fused_path, copy.deepcopy(model), encoded, gradient, device, dtype,
                           target=targets)
        elif name == "naive":
            work = partial(naive_path, model, encoded, config, device, dtype)
        else:
            work = partial(ifd_path, model, tokenizer, encoded, config, device, forward_dtype)
        timings[name], outputs[name] = _on_rank0(comm, lambda work=work, name=name: measured(
            name, work, encoded, row_tokens[name], device))
        log(f"{name}: {timings[name].seconds:.1f} s" if timings[name] else "")
    if comm.rank != 0:
        return {}
    report = {
        "config": asdict(config),
        "device": str(device),
        "dtype": str(dtype),
        "forward_dtype": str(forward_dtype),
        "proxy_parameters": params,
        "examples": len(encoded),
        "tokens": tokens,
        "processes": comm.world,
        "layout": [layout.describe(rank) for rank in range(comm.world)],
        "scaling": scaling,
        "paths": {
            name: {**asdict(t), "examples_per_s": t.examples_per_s,
                   "examples_per_s_per_process": t.examples_per_s_per_process,
                   "tokens_per_s": t.tokens_per_s,
                   "utilisation": utilisation(t, flops[name], device)}
            for name, t in timings.items()
        },
    }
    if "fused" in timings and "naive" in timings:
        report["fused_over_naive"] = timings["naive"].seconds / timings["fused"].seconds
        report["max_relative_difference_fused_vs_naive"] = max_relative_difference(
            outputs["fused"].sqnorms, outputs["naive"])
    if "fused" in timings:
        report["fused_phase_seconds"] = outputs["fused"].phase_seconds
    if "fused" in timings and "ifd" in timings:
        report["fused_over_ifd"] = timings["ifd"].seconds / timings["fused"].seconds
    if "during" in timings and "snapshot" in timings:
        report["during_over_snapshot"] = timings["snapshot"].seconds / timings["during"].seconds
        report["during_vs_snapshot_agreement"] = mode_agreement(outputs["during"],
                                                                outputs["snapshot"], config)
    for name in timings:
        if name != "fused" and gradient_base(name) is not None:
            report[f"{name}_phase_seconds"] = outputs[name].phase_seconds
    if target:
        report["target_examples"] = len(target)
        report["target_overhead"] = target_overhead(timings, outputs)
    return report


def target_overhead(timings: dict[str, PathTiming], outputs: dict[str, Any]) -> dict:
    """Per gradient path timed both with and without the target: the seconds of each and
    their ratio, in wall and in CPU time, and the wall seconds the target passes themselves
    took (their phases)."""
    overhead = {}
    for base in GRADIENT_PATHS:
        name = base + TARGETED
        if base in timings and name in timings:
            phases = outputs[name].phase_seconds
            overhead[base] = {
                "seconds": timings[base].seconds, "target_seconds": timings[name].seconds,
                "ratio": timings[name].seconds / timings[base].seconds,
                "cpu_seconds": timings[base].cpu_seconds,
                "target_cpu_seconds": timings[name].cpu_seconds,
                "cpu_ratio": timings[name].cpu_seconds / timings[base].cpu_seconds,
                "target_pass_seconds": sum(v for k, v in phases.items()
                                           if k.startswith("target_epoch"))}
    return overhead


def speed_table(report: dict) -> str:
    rows = ["| path | processes | seconds | CPU seconds | examples/s | examples/s per process | "
            "tokens/s | host peak MiB | device peak MiB | utilisation |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in report["paths"].items():
        device_peak = "-" if p["device_peak_mib"] is None else f"{p['device_peak_mib']:.0f}"
        use = "-" if p["utilisation"] is None else f"{p['utilisation']:.1%}"
        rows.append(f"| {name} | {p['processes']} | {p['seconds']:.2f} | "
                    f"{p['cpu_seconds']:.2f} | "
                    f"{p['examples_per_s']:.2f} | {p['examples_per_s_per_process']:.2f} | "
                    f"{p['tokens_per_s']:.0f} | {p['host_peak_mib']:.0f} | {device_peak} | {use} |")
    lines = ["\n".join(rows), ""]
    for name, figures in report.get("scaling", {}).items():
        lines.append(f"{name}: 1 -> {figures['processes']} processes: "
                     f"{figures['one_process_seconds']:.2f} s -> {figures['seconds']:.2f} s, "
                     f"speed-up {figures['speedup']:.2f}x")
    if "fused_over_naive" in report:
        lines.append(f"a/b (fused throughput / naive throughput): "
                     f"{report['fused_over_naive']:.2f}x; largest relative difference of the "
                     f"squared norms: "
                     f"{report['max_relative_difference_fused_vs_naive']:.2e}")
    if "fused_phase_seconds" in report:
        lines.append("fused, seconds per phase: " + ", ".join(
            f"{name} {seconds:.1f}" for name, seconds in report["fused_phase_seconds"].items()))
    if "fused_over_ifd" in report:
        lines.append(f"a/c (fused throughput / IFD throughput): {report['fused_over_ifd']:.3f}")
    for base, figures in report.get("target_overhead", {}).items():
        lines.append(f"{base}{TARGETED} / {base} ({report['target_examples']} target examples, "
                     f"{report['target_examples'] / report['examples']:.0%} of the pool): "
                     f"{figures['target_seconds']:.1f} s / {figures['seconds']:.1f} s = "
                     f"{figures['ratio']:.3f}x (CPU time: {figures['target_cpu_seconds']:.1f} s "
                     f"/ {figures['cpu_seconds']:.1f} s = {figures['cpu_ratio']:.3f}x); the "
                     f"target passes took {figures['target_pass_seconds']:.1f} s")
    if "during_over_snapshot" in report:
        lines.append(f"during throughput / snapshot throughput: "
                     f"{report['during_over_snapshot']:.2f}x")
        for name, agreement in report["during_vs_snapshot_agreement"].items():
            lines.append(f"during vs snapshot, {name}: Spearman {agreement['spearman']:.3f}, "
                         f"top-10% overlap {agreement['top_overlap']:.2f}")
    return "\n".join(lines) + "\n"


def random_gpt2(spec: str, tokenizer_source: str, directory: Path) -> str:
    """Save a randomly initialised GPT-2-shaped model ('random-gpt2:LAYERS:WIDTH') with the
    tokenizer of `tokenizer_source`, for measuring speed where no GPT-2 download is possible."""
    from transformers import AutoModelForCausalLM, GPT2Config

    parts = spec.split(":")
    layers, width = (int(parts[1]), int(parts[2])) if len(parts) == 3 else (12, 768)
    tokenizer = load_tokenizer(tokenizer_source)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=width,
                        n_layer=layers, n_head=max(1, width // 64),
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
