"""Does Adam's preconditioning change the `align` ranking? (issue 25)

LESS (Xia et al., ICML 2024) scores a training record by the cosine between the target's
plain (SGD) gradient and the record's *Adam update*: the step AdamW would take from the
checkpoint's moments if the record's own gradient were the next one. gradfilter's `align`
takes plain gradients on both sides. This study trains the LoRA ensemble exactly as `score`
does (gradfilter's own `LoRAEnsemble` and `Trainer`, ScoreConfig defaults but the ones named
below), and at the end of each collected epoch (s and t) measures, per member, from *full*
LoRA gradients (no sketch):

- t^(m,e): the gradient of the target examples' mean loss (one backward of it; the direction
  `align` sketches);
- for every pool record i, its own gradient g_i (exact per-row LoRA gradients from one batched
  backward, as scoring/ensemble.py forms them), and the cosine with t^(m,e) of four vectors:
  `plain`   g_i (what `align` reads, unsketched);
  `less`    (b1 m + (1 - b1) g_i) / sqrt(b2 v + (1 - b2) g_i^2 + 1e-8), LESS's own formula
            (its `obtain_gradients_with_adam`: betas 0.9, 0.999, no bias correction, the 1e-8
            inside the root), m = exp_avg and v = exp_avg_sq of the member's AdamW state;
  `adamw`   torch AdamW's next step from that state: m_hat / (sqrt(v_hat) + eps), the moments
            updated with g_i and bias-corrected for step k + 1 (k steps done; the optimiser's
            betas and eps);
  `precond` g_i / (sqrt(v / (1 - b2^k)) + eps): the preconditioner alone, no momentum.

Each reading is aggregated as `align` aggregates: a member's two epochs averaged, then the
members' mean. Printed: Spearman and top-10% / top-5% overlap of each reading's ranking with
the plain one (per member: mean and range over members; aggregate: 95% bootstrap interval over
records), and the same between the plain rankings of two ensemble seeds, the yardstick
(`seed`), with the paired bootstrap interval of the difference; each ranking's count of
target-domain (`domain` = sinstruct) records in its top 10%. A self-check recomputes one
record's plain cosine from a backward of that record alone, and its `adamw` cosine from the
step torch's AdamW itself takes (a copy of the state, that gradient, lr 1).

    python benchmarks/studies/adam_alignment.py /tmp/adam-study/pool/pool.jsonl \\
        /tmp/adam-study/pool/target.jsonl --proxy /tmp/smollm2-8l --max-length 192 \\
        --out /tmp/adam-study/adam_alignment.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from gradfilter.bench.speed import rank_agreement
from gradfilter.config import ScoreConfig
from gradfilter.data.dataset import as_dataset
from gradfilter.progress import progress_bars
from gradfilter.scoring.batching import Batcher, collection_batches
from gradfilter.scoring.budget import batch_tokens
from gradfilter.scoring.checkpoint import NullCheckpoint
from gradfilter.scoring.distributed import Comm, Layout
from gradfilter.scoring.ensemble import LoRAEnsemble, RowGradRecorder, recorded_backward
from gradfilter.scoring.proxy import default_targets, load_model, load_tokenizer
from gradfilter.scoring.score import tokenize
from gradfilter.scoring.trainer import Trainer

READINGS = ("plain", "less", "adamw", "precond")
LESS_BETAS, LESS_EPS = (0.9, 0.999), 1e-8  # LESS's constants, as its code fixes them


class MomentState:
    """One layer block's reference tensors for all held members, [members, 1, a, b] float64:
    the target direction and the AdamW moments (k steps done)."""

    def __init__(self, target: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor):
        self.target, self.m, self.v = (t.double().unsqueeze(1)
                                       for t in (target, exp_avg, exp_avg_sq))


class AlignmentRecorder(RowGradRecorder):
    """Every row's exact LoRA gradient, block by block as the backward forms it, folded at
    once into its dot product with the target direction and its squared norm, under each
    reading (nothing of size |gradient| is kept per row)."""

    def __init__(self, members: int, rows: int, blocks: dict[tuple[str, str], MomentState],
                 step: int, betas: tuple[float, float], eps: float) -> None:
        super().__init__(members * rows, torch.device("cpu"))
        self.members, self.per_member = members, rows
        self.blocks, self.step, self.betas, self.eps = blocks, step, betas, eps
        self.dots = {r: torch.zeros(members, rows, dtype=torch.float64) for r in READINGS}
        self.norms = {r: torch.zeros(members, rows, dtype=torch.float64) for r in READINGS}

    def watch(self, x: torch.Tensor, h: torch.Tensor, u: torch.Tensor, layer: str = "") -> None:
        rows = self.rows
        x_rows = x.reshape(rows, -1, x.shape[-1]).float()
        h_rows = h.reshape(rows, -1, h.shape[-1]).float()
        h.register_hook(lambda grad: self._fold(grad, x_rows, self.blocks[layer, "A"]))
        u.register_hook(lambda grad: self._fold(grad, h_rows, self.blocks[layer, "B"]))

    def _fold(self, out_grad: torch.Tensor, inputs: torch.Tensor, ref: MomentState) -> None:
        out_grad = out_grad.reshape(self.rows, -1, out_grad.shape[-1]).float()
        g = torch.bmm(out_grad.transpose(1, 2), inputs).double()
        g = g.view(self.members, self.per_member, *g.shape[1:])
        for reading, vector in self._readings(g, ref).items():
            self.dots[reading] += (vector * ref.target).sum(dim=(2, 3))
            self.norms[reading] += vector.pow(2).sum(dim=(2, 3))

    def _readings(self, g: torch.Tensor, ref: MomentState) -> dict[str, torch.Tensor]:
        (b1, b2), (l1, l2), k = self.betas, LESS_BETAS, self.step
        m_less, v_less = l1 * ref.m + (1 - l1) * g, l2 * ref.v + (1 - l2) * g.pow(2)
        m_next, v_next = b1 * ref.m + (1 - b1) * g, b2 * ref.v + (1 - b2) * g.pow(2)
        m_hat, v_hat = m_next / (1 - b1 ** (k + 1)), v_next / (1 - b2 ** (k + 1))
        return {"plain": g,
                "less": m_less / torch.sqrt(v_less + LESS_EPS),
                "adamw": m_hat / (v_hat.sqrt() + self.eps),
                "precond": g / ((ref.v / (1 - b2 ** k)).sqrt() + self.eps)}

    def cosines(self, target_sq: torch.Tensor) -> dict[str, np.ndarray]:
        """[members, rows] cosine with the target direction per reading."""
        scale = target_sq.sqrt().unsqueeze(1)
        return {r: (self.dots[r] / (self.norms[r].sqrt() * scale)).numpy() for r in READINGS}


def target_direction(ensemble: LoRAEnsemble, batcher: Batcher, n: int, chunk: int,
                     autocast: torch.autocast) -> dict[tuple[str, str], torch.Tensor]:
    """Each member's gradient of the target examples' mean loss, per layer block: the backward
    of sum(losses) / n over all of them, accumulated chunk by chunk."""
    for start in range(0, n, chunk):
        rows = list(range(start, min(start + chunk, n)))
        recorded_backward(ensemble, batcher.batch([rows] * ensemble.members), None, autocast, n)
    direction = {}
    for name, layer in ensemble.layers.items():
        for key, p in (("A", layer.lora_A), ("B", layer.lora_B)):
            direction[name, key] = p.grad.detach().clone()
            p.grad = None
    return direction


def measure_epoch(ensemble: LoRAEnsemble, optimizer: torch.optim.AdamW, pool: Batcher,
                  lengths: np.ndarray, target: Batcher, n_target: int, chunk: int,
                  autocast: torch.autocast) -> dict[str, np.ndarray]:
    """Every reading's [records, members] cosine at the ensemble's current adapters and
    optimiser state; and `check` (`self_check`)."""
    direction = target_direction(ensemble, target, n_target, chunk, autocast)
    group = optimizer.param_groups[0]
    blocks = {}
    for name, layer in ensemble.layers.items():
        for key, p in (("A", layer.lora_A), ("B", layer.lora_B)):
            state = optimizer.state[p]
            blocks[name, key] = MomentState(direction[name, key], state["exp_avg"],
                                            state["exp_avg_sq"])
    step = int(optimizer.state[ensemble.parameters()[0]]["step"])
    target_sq = sum(d.double().pow(2).flatten(1).sum(1) for d in direction.values())
    result = {r: np.full((len(lengths), ensemble.members), np.nan) for r in READINGS}
    for rows in collection_batches(lengths, chunk, True):
        recorder = AlignmentRecorder(ensemble.members, len(rows), blocks, step,
                                     group["betas"], group["eps"])
        recorded_backward(ensemble, pool.batch([rows] * ensemble.members), recorder, autocast)
        for p in ensemble.parameters():
            p.grad = None
        for reading, cos in recorder.cosines(target_sq).items():
            result[reading][rows] = cos.T
    result["check"] = self_check(ensemble, optimizer, pool, int(collection_batches(
        lengths, chunk, True)[0][0]), direction, target_sq, autocast,
        {r: result[r] for r in ("plain", "adamw")})
    return result


def self_check(ensemble: LoRAEnsemble, optimizer: torch.optim.AdamW, pool: Batcher, row: int,
               direction: dict[tuple[str, str], torch.Tensor], target_sq: torch.Tensor,
               autocast: torch.autocast, readings: dict[str, np.ndarray]) -> np.ndarray:
    """Record `row` measured another way: its gradient from a backward of it alone (`plain`),
    and the step torch's own AdamW takes from a copy of the optimiser's state with that
    gradient and lr 1 (`adamw`); the largest difference from the batched readings, each."""
    recorded_backward(ensemble, pool.batch([[row]] * ensemble.members), None, autocast)
    params = ensemble.parameters()
    copies = [p.detach().clone().requires_grad_() for p in params]
    stepper = torch.optim.AdamW(copies, lr=1.0, weight_decay=0.0)
    stepper.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # not its tensors
    for group in stepper.param_groups:
        group["lr"] = 1.0
    for p, q in zip(params, copies, strict=True):
        q.grad = p.grad.detach().clone()
    stepper.step()
    steps = {(name, key): (p.detach() - q.detach()).double()
             for (name, key, p), q in zip(named_blocks(ensemble), copies, strict=True)}
    grads = {(name, key): layer_grad(p) for name, key, p in named_blocks(ensemble)}
    for p in params:
        p.grad = None
    gaps = []
    for reading, vectors in (("plain", grads), ("adamw", steps)):
        dots = sum((vectors[b] * direction[b].double()).flatten(1).sum(1) for b in vectors)
        sq = sum(v.pow(2).flatten(1).sum(1) for v in vectors.values())
        alone = (dots / (sq.sqrt() * target_sq.sqrt())).numpy()
        gaps.append(np.abs(alone - readings[reading][row]).max())
    return np.array(gaps)


def layer_grad(p: torch.nn.Parameter) -> torch.Tensor:
    assert p.grad is not None
    return p.grad.double()


def named_blocks(ensemble: LoRAEnsemble) -> list[tuple[str, str, torch.nn.Parameter]]:
    return [(name, key, p) for name, layer in ensemble.layers.items()
            for key, p in (("A", layer.lora_A), ("B", layer.lora_B))]


def run_seed(model: torch.nn.Module, pool_tokens, target_tokens, config: ScoreConfig,
             chunk: int) -> dict[str, np.ndarray]:
    """Train one ensemble as `score` does; every reading's [records, members, epochs]
    cosines at the end of epochs s and t."""
    device = torch.device("cpu")
    ensemble = LoRAEnsemble(model, config.members, config.lora_rank, config.lora_alpha,
                            config.targets, config.seed)
    encoded = [pool_tokens.encoded[i] for i in pool_tokens.scorable]
    targets = [target_tokens.encoded[i] for i in target_tokens.scorable]
    lengths = np.array([len(item.input_ids) for item in encoded])
    autocast = torch.autocast("cpu", enabled=False)
    pool, target = Batcher(encoded, device), Batcher(targets, device)
    budget = batch_tokens(config.batch_tokens, model, device, torch.float32, "gradients")
    trainer = Trainer(ensemble, pool, lengths, config, autocast, NullCheckpoint(), budget,
                      layout=Layout(members=config.members), comm=Comm())
    epochs = {}
    with progress_bars(False) as bars:
        for epoch in range(1, config.epochs + 1):
            trainer.train_epoch(epoch, bars)
            if epoch in (config.early, config.late):
                epochs[epoch] = measure_epoch(ensemble, trainer.optimizer, pool, lengths,
                                              target, len(targets), chunk, autocast)
    keys = epochs[config.early]
    return {key: np.stack([epochs[e][key] for e in (config.early, config.late)], -1)
            for key in keys}


# --- the comparison ----------------------------------------------------------------------

def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman (scipy's: average ranks, as the bootstrap below) and the shared top 10% and 5%
    (`bench.speed.rank_agreement`'s overlap, ranked as `select` ranks)."""
    return {"spearman": float(spearmanr(a, b).statistic),
            "top10": rank_agreement(a, b, 0.10)["top_overlap"],
            "top5": rank_agreement(a, b, 0.05)["top_overlap"]}


def bootstrap(pairs: list[tuple[np.ndarray, np.ndarray]], resamples: int,
              seed: int = 0) -> np.ndarray:
    """[resamples, pairs] Spearman over records resampled with replacement (the same draws
    for every pair, so differences are paired)."""
    rng = np.random.default_rng(seed)
    n = len(pairs[0][0])
    out = np.empty((resamples, len(pairs)))
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        out[b] = [spearmanr(x[idx], y[idx]).statistic for x, y in pairs]
    return out


def interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def compare(seeds: list[dict[str, np.ndarray]], domain: np.ndarray,
            resamples: int) -> dict:
    """Every reading against plain (seed 0), and plain seed 0 against plain seed 1."""
    members = [{r: s[r].mean(-1) for r in READINGS} for s in seeds]  # [records, members]
    aggregate = [{r: m[r].mean(1) for r in READINGS} for m in members]
    plain0 = aggregate[0]["plain"]
    rows: dict[str, dict] = {}
    pairs = []
    for reading in READINGS[1:]:
        per_member = [agreement(members[0]["plain"][:, k], members[0][reading][:, k])
                      for k in range(members[0]["plain"].shape[1])]
        rows[f"{reading} vs plain"] = {"aggregate": agreement(plain0, aggregate[0][reading]),
                                       "members": per_member}
        pairs.append((plain0, aggregate[0][reading]))
    if len(seeds) > 1:
        for reading in ("plain", "less"):
            per_member = [agreement(members[0][reading][:, k], members[1][reading][:, k])
                          for k in range(members[0][reading].shape[1])]
            rows[f"{reading}: seed 0 vs seed 1"] = {
                "aggregate": agreement(aggregate[0][reading], aggregate[1][reading]),
                "members": per_member}
            pairs.append((aggregate[0][reading], aggregate[1][reading]))
    draws = bootstrap(pairs, resamples)
    for j, name in enumerate(rows):
        rows[name]["aggregate"]["spearman_ci"] = interval(draws[:, j])
    if len(seeds) > 1:
        seed_column = list(rows).index("plain: seed 0 vs seed 1")
        for j, reading in enumerate(READINGS[1:]):
            diff = draws[:, j] - draws[:, seed_column]
            rows[f"{reading} vs plain"]["minus_seed"] = {
                "spearman": (rows[f"{reading} vs plain"]["aggregate"]["spearman"]
                             - rows["plain: seed 0 vs seed 1"]["aggregate"]["spearman"]),
                "ci": interval(diff)}
    k = max(1, int(np.floor(0.1 * len(plain0) + 0.5)))
    kept = {f"{r} seed {s}": int(domain[np.argsort(-aggregate[s][r], kind="stable")[:k]].sum())
            for s in range(len(seeds)) for r in READINGS}
    return {"rows": rows, "domain_in_top10": kept, "top10_size": k,
            "domain_in_pool": int(domain.sum())}


def print_report(report: dict) -> None:
    print("| comparison | Spearman, aggregate [95% CI] | top-10% | top-5% | "
          "Spearman per member: mean (range) | top-10% per member: mean (range) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in report["rows"].items():
        agg, members = row["aggregate"], row["members"]
        rho = [m["spearman"] for m in members]
        top = [m["top10"] for m in members]
        lo, hi = agg["spearman_ci"]
        print(f"| {name} | {agg['spearman']:.3f} [{lo:.3f}, {hi:.3f}] | {agg['top10']:.2f} | "
              f"{agg['top5']:.2f} | {np.mean(rho):.3f} ({min(rho):.3f} to {max(rho):.3f}) | "
              f"{np.mean(top):.2f} ({min(top):.2f} to {max(top):.2f}) |")
    for name, row in report["rows"].items():
        if "minus_seed" in row:
            lo, hi = row["minus_seed"]["ci"]
            print(f"Spearman({name}) - Spearman(plain: seed 0 vs seed 1): "
                  f"{row['minus_seed']['spearman']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    print(f"target-domain records in the top {report['top10_size']} "
          f"(pool holds {report['domain_in_pool']}): {report['domain_in_top10']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pool", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--seeds", default="0,1", help="ensemble seeds; the first is compared "
                        "reading by reading, the second is the yardstick")
    parser.add_argument("--chunk", type=int, default=8, help="records per member per pass")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.proxy)
    base = load_model(args.proxy, torch.device("cpu"))
    config = replace(ScoreConfig(proxy=args.proxy, members=args.members, device="cpu",
                                 dtype="float32", max_length=args.max_length,
                                 collect="snapshot"),
                     lora_targets=default_targets(base))
    pool_data, target_data = as_dataset(args.pool), as_dataset(args.target)
    pool_tokens = tokenize(pool_data, tokenizer, config, False)
    target_tokens = tokenize(target_data, tokenizer, config, False)
    domain = np.array([pool_data.records[i].data.get("domain") == "sinstruct"
                       for i in pool_tokens.scorable])
    seeds, seconds = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        seeds.append(run_seed(copy.deepcopy(base), pool_tokens, target_tokens,
                              replace(config, seed=seed), args.chunk))
        seconds.append(time.perf_counter() - start)
        plain_gap, adamw_gap = seeds[-1]["check"].max(axis=-1)
        print(f"seed {seed}: {seconds[-1]:.0f} s; self-check, largest difference from one "
              f"record measured alone: plain {plain_gap:.1e}, adamw (torch's step) "
              f"{adamw_gap:.1e}", flush=True)
    report = compare(seeds, domain, args.resamples)
    steps = config.epochs * -(-len(pool_tokens.scorable) // config.batch_size)
    report.update(records=len(pool_tokens.scorable),
                  targets=len(target_tokens.scorable), steps=steps, seconds=seconds,
                  config=asdict(config), torch_threads=torch.get_num_threads())
    print(f"{report['records']} records, {report['targets']} target examples, {steps} steps "
          f"per ensemble, {config.members} members, max length {config.max_length}")
    print_report(report)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
