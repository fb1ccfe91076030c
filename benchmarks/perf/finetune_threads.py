"""What CPU contention costs a fine-tune, and what `--threads` buys back.

One tiny-model fine-tune (the `bench finetune` training loop: LoRA, AdamW, held-out loss at
the start and the end) on synthetic token sequences, timed with torch's intra-op threads at 1
and at every core this process may use, with and without a busy-loop process holding one core
(pinned to the last core of this process's affinity). Each setting runs in a fresh process, one
after another (`--repeats` rounds), so a shared machine's load drifts across all of them; the
load average is printed beside each figure.

    python benchmarks/perf/finetune_threads.py --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def one_run(threads: int, steps: int, width: int, layers: int) -> dict:
    """Seconds per optimiser step of one fine-tune on `threads` threads (in this process)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from gradfilter.bench.finetune import RunSettings, train_seed
    from gradfilter.scoring.tokenization import Encoded

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(
        vocab_size=2000, n_positions=256, n_embd=width, n_layer=layers, n_head=max(1, width // 64)))
    rng = np.random.default_rng(0)

    def example(length: int) -> Encoded:
        mask = np.zeros(length, dtype=bool)
        mask[length // 3:] = True  # the last two thirds are the response
        return Encoded(rng.integers(0, 2000, length).astype(np.int64), mask, truncated=False)

    subset = [example(int(n)) for n in rng.integers(64, 128, 32)]
    held_out = [example(int(n)) for n in rng.integers(64, 128, 8)]
    settings = RunSettings(steps=steps, eval_every=steps, batch_size=8, lr=1e-3, lora_rank=8,
                           lora_alpha=16.0, grad_clip=1.0, eval_batch_size=8,
                           full_finetune=False, base_seed=0)
    targets = ("c_attn", "c_proj", "c_fc")
    started = time.perf_counter()
    run = train_seed(model, targets, subset, held_out, settings, 0, torch.device("cpu"),
                     torch.float32, None, "synthetic")
    seconds = time.perf_counter() - started
    return {"threads": threads, "seconds": seconds, "seconds_per_step": seconds / steps,
            "final_held_out": float(np.mean(run["eval_loss"][-1]))}


def busy_core() -> subprocess.Popen:
    """A process that spins on the last core this process may use."""
    core = max(os.sched_getaffinity(0))
    return subprocess.Popen([sys.executable, "-c",
                             f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])


def measure(threads: int, busy: bool, args: argparse.Namespace) -> dict:
    spinner = busy_core() if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--child", str(threads), "--steps",
                              str(args.steps), "--width", str(args.width), "--layers",
                              str(args.layers)], capture_output=True, text=True, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "busy_core": busy,
            "load_average_1min": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, args.steps, args.width, args.layers)))
        return
    cores = len(os.sched_getaffinity(0))
    settings = [(threads, busy) for busy in (False, True) for threads in sorted({1, cores})]
    rows = [measure(threads, busy, args) for _ in range(args.repeats)
            for threads, busy in settings]
    print(f"{cores} cores; tiny GPT-2 {args.layers} layers x {args.width}, LoRA rank 8, "
          f"batch 8 of 64-128 tokens, {args.steps} steps")
    print("| other core | threads | s/step | load (1 min) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {'busy' if row['busy_core'] else 'free'} | {row['threads']} | "
              f"{row['seconds_per_step']:.3f} | {row['load_average_1min']:.1f} |")


if __name__ == "__main__":
    main()
