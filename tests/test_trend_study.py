"""The trend study's scripts on made-up inputs: trend_finetune.py's trend of fine-tune differences
across pool sizes (paired by seed and held-out example) and the pre-registered decision rule;
trend.py's bootstrap within segments and its trend words."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "studies"))

from trend_finetune import decide, study

from gradfilter.bench.finetune_measures import Curves, budget_results
from gradfilter.errors import GradfilterError

SEEDS, EXAMPLES, STEPS = (0, 1, 2), 40, [0, 2, 4]


def write_size(directory: Path, n: int, offsets: dict[str, float], rng) -> None:
    """ft<n>: every row's curves fall from 2.0 by `offsets[row]` more than random's; random
    has three draws. Each run file holds [points, examples] losses as bench finetune writes."""
    ft = directory / f"ft{n}"
    (ft / "runs").mkdir(parents=True)
    shared = rng.normal(0, 0.2, EXAMPLES)  # held-out examples differ, the same at every size
    rows: dict[str, list[Curves]] = {}
    names: dict[str, str] = {}
    for row, offset in offsets.items():
        draws = 3 if row == "random" else 1
        for d in range(draws):
            name = f"random-draw{d}@0.1" if row == "random" else f"{row}@0.1"
            losses = np.empty((len(STEPS), len(SEEDS), EXAMPLES))
            for s, seed in enumerate(SEEDS):
                for p, step in enumerate(STEPS):
                    drop = 0.0 if step == 0 else 0.1 * step + offset
                    losses[p, s] = 2.0 + shared - drop + rng.normal(0, 0.01, EXAMPLES)
                run = {"seed": seed, "eval_steps": STEPS, "eval_loss": losses[:, s].tolist(),
                       "train_loss": [1.0] * STEPS[-1]}
                (ft / "runs" / f"{name}-s{seed}-abc{d}{seed}.json").write_text(json.dumps(run))
            rows.setdefault(row, []).append(Curves(np.ones((3, 4)), STEPS, losses, 1.0))
            names[name] = row
    table, schedule = budget_results(rows, {r: 30 for r in rows}, STEPS[-1], 8)
    results = {"run_seeds": {str(s): s for s in SEEDS}, "results": {"0.1": table},
               "schedule": {"0.1": schedule}, "curves": {name: {} for name in names}}
    (ft / "results.json").write_text(json.dumps(results))


@pytest.fixture()
def trend_dir(tmp_path):
    rng = np.random.default_rng(0)
    # snr-member-gated: 0.05 lower than random at 300, 0.25 lower at 1,000 (its standing
    # rises); ifd: 0.1 lower at both sizes (no trend)
    write_size(tmp_path, 300, {"snr-member-gated": 0.05, "ifd": 0.1, "random": 0.0,
                               "full": 0.3}, rng)
    write_size(tmp_path, 1000, {"snr-member-gated": 0.25, "ifd": 0.1, "random": 0.0,
                                "full": 0.3}, rng)
    return tmp_path


def test_the_trend_of_a_difference_is_paired_across_sizes(trend_dir):
    result = study(trend_dir)
    assert result["sizes"] == [300, 1000]
    rising = result["trend"]["snr-member-gated"]["auc_vs_random"]
    assert rising["estimate"] == pytest.approx(-0.2, abs=0.01)
    assert rising["high"] < 0  # the standing against random rises: the loss gap widens
    flat = result["trend"]["ifd"]["auc_vs_random"]
    assert flat["low"] < 0 < flat["high"]
    # paired by example: the examples' shared spread (0.2) would swamp an unpaired interval
    assert flat["high"] - flat["low"] < 0.02
    assert result["by_size"][1000]["snr-member-gated"]["auc_vs_ifd"]["high"] < 0


def test_a_selector_run_at_one_size_is_compared_there_and_left_out_of_the_trend(tmp_path):
    """Issue 34's coverage subsets, fine-tuned at 300 only: compared with the default top-k
    and `length` there (paired), no trend claimed from one size."""
    rng = np.random.default_rng(1)
    write_size(tmp_path, 300, {"snr-member-gated": 0.0, "length": 0.1, "coverage": 0.05,
                               "ifd": 0.0, "random": 0.0}, rng)
    write_size(tmp_path, 1000, {"snr-member-gated": 0.0, "length": 0.1, "ifd": 0.0,
                                "random": 0.0}, rng)
    result = study(tmp_path)
    assert "coverage" not in result["trend"] and "length" in result["trend"]
    versus = result["selectors"][300]["coverage"]
    assert versus["auc_vs_snr-member-gated"]["estimate"] == pytest.approx(-0.05, abs=0.005)
    assert versus["auc_vs_snr-member-gated"]["high"] < 0  # lower loss than the default top-k
    assert result["by_size"][300]["coverage"]["auc_vs_length"]["low"] > 0  # above length's
    assert result["by_size"][300]["coverage"]["auc_vs_random"]["high"] < 0
    assert 1000 not in result["selectors"]


def test_two_runs_of_one_seed_are_refused(trend_dir):
    runs = trend_dir / "ft1000" / "runs"
    first = next(runs.glob("ifd@0.1-s0-*.json"))
    (runs / "ifd@0.1-s0-other.json").write_text(first.read_text())
    with pytest.raises(GradfilterError, match=r"2 runs of ifd@0\.1 seed 0"):
        study(trend_dir)


def interval(estimate: float, half: float = 0.02) -> dict:
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half}


def noise_entry(vs_random: float, vs_ifd: float, groups: tuple[float, float, float],
                trend: float = 0.0) -> dict:
    at = {"vs_random": {"auroc": interval(vs_random)}, "vs_ifd": {"auroc": interval(vs_ifd)},
          **{g: interval(v) for g, v in zip(("auroc_shipped", "auroc_study", "auroc_new"),
                                            groups, strict=True)}}
    return {"by_size": {"300": at, "1000": at}, "trend": {"vs_random": {"auroc": interval(trend)}}}


def finetune_entry(vs_random: float, vs_ifd: float) -> dict:
    return {"auc_vs_random": interval(vs_random, 0.005), "auc_vs_ifd": interval(vs_ifd, 0.005)}


def made_up(gsnr_better: bool) -> tuple[dict, dict]:
    """Noise: IFD and length beat random; the G-SNR utilities beat random only if
    `gsnr_better`, where snr-member-gated's worst group is the highest."""
    g = 0.1 if gsnr_better else 0.0
    noise = {"sizes": [300, 1000], "methods": {
        "snr-member-gated": noise_entry(g, 0.0 if gsnr_better else -0.1, (0.62, 0.60, 0.61)),
        "snr-member": noise_entry(g, 0.0, (0.70, 0.55, 0.60)),
        "gsnr": noise_entry(g, -0.1, (0.5, 0.5, 0.5)),
        "gsnr-cv": noise_entry(g, 0.0, (0.58, 0.57, 0.56)),
        "drop": noise_entry(g, 0.0, (0.59, 0.59, 0.4), trend=-0.1),
        "ifd": noise_entry(0.12, 0.0, (0.70, 0.62, 0.51)),
        "length": noise_entry(0.12, 0.0, (0.71, 0.73, 0.39)),
        "loss": noise_entry(0.0, -0.05, (0.6, 0.5, 0.6))}}
    ft = {m: finetune_entry(-0.02 if m == "ifd" else 0.0, 0.0)
          for m in ("snr-member-gated", "gsnr", "gsnr-cv", "drop", "ifd", "loss", "length")}
    return noise, {"sizes": [300], "by_size": {300: ft}, "trend": {}}


def test_rule_1_keeps_the_qualifying_gsnr_utility_with_the_best_worst_group():
    d = decide(*made_up(gsnr_better=True))
    assert d["size"] == 300 and d["rule"] == 1
    assert "snr-member" not in d["qualified"]  # no fine-tune run
    assert "gsnr" not in d["qualified"] and "drop" not in d["qualified"]
    assert d["reasons"]["drop"] == ["noise standing against random falls with pool size"]
    assert d["method"] == "snr-member-gated"
    assert d["gsnr_utility"] == "snr-member-gated"


def test_rule_2_picks_the_baseline_better_than_random_on_most_benchmarks():
    d = decide(*made_up(gsnr_better=False))
    assert d["rule"] == 2 and not d["qualified"]
    assert d["reasons"]["snr-member-gated"] == ["noise AUROC not better than random",
                                                "noise AUROC worse than IFD"]
    assert d["baseline_wins"] == {"ifd": 2, "length": 1, "loss": 0}
    assert d["method"] == "ifd"


def test_the_noise_trend_resamples_records_within_their_segment():
    """trend.py: one bootstrap for every size, records resampled within 0-299, 300-999, ...,
    so that the smaller pools see the same resampled records as the larger."""
    from trend import segment_weights, verdict

    weights = segment_weights([3, 10, 30], resamples=50, seed=1)
    assert weights.shape == (50, 30)
    for start, stop in ((0, 3), (3, 10), (10, 30)):
        np.testing.assert_array_equal(weights[:, start:stop].sum(axis=1), stop - start)
    assert len({tuple(w) for w in weights}) > 1
    assert verdict({"estimate": 0.1, "low": 0.01, "high": 0.2}).startswith("rises")
    assert verdict({"estimate": -0.1, "low": -0.2, "high": -0.01}).startswith("falls")
    assert verdict({"estimate": 0.1, "low": -0.01, "high": 0.2}).startswith("no trend")


def test_a_fine_tune_verdict_splits_by_the_held_out_answers_length(tmp_path):
    """finetune_by_answer_length.py: a subset that helps only on the short held-out answers
    shows its lead there and a tie on the long ones."""
    from finetune_by_answer_length import split_differences

    rng = np.random.default_rng(0)
    write_size(tmp_path, 300, {"snr-member-gated": 0.0, "random": 0.0}, rng)
    ft = tmp_path / "ft300"
    answers = ["ok" if i % 2 else "a long answer " * 20 for i in range(EXAMPLES)]
    pool = tmp_path / "pool.jsonl"
    records = [{"instruction": f"task {i}", "input": "", "output": a}
               for i, a in enumerate(answers)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    short = [i for i, a in enumerate(answers) if len(a) < 100]
    for run in (ft / "runs").glob("snr-member-gated@*.json"):
        body = json.loads(run.read_text())
        losses = np.array(body["eval_loss"])
        losses[1:, short] -= 0.2  # better than random on the short answers only
        body["eval_loss"] = losses.tolist()
        run.write_text(json.dumps(body))
    results = json.loads((ft / "results.json").read_text())
    results["held_out_records"] = list(range(EXAMPLES))
    (ft / "results.json").write_text(json.dumps(results))

    split = split_differences(ft, pool, cut=100, reading="auc")
    assert split["records"] == {"short": EXAMPLES // 2, "long": EXAMPLES // 2}
    cells = split["rows"]["snr-member-gated"]
    assert cells["short"]["estimate"] == pytest.approx(-0.2, abs=0.02)
    assert cells["short"]["high"] < 0
    assert cells["long"]["low"] < 0 < cells["long"]["high"]
