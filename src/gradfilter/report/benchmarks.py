"""A benchmark's page, from its output directory alone: results.json, its run record, and the
files they name (the noise benchmark's tables and labels, the fine-tune benchmark's runs).

One adapter per benchmark turns its results into sections (noise_page, finetune_page,
judge_page); they read what they know and render the rest generically (`results`), so a results
file with more keys than these adapters know still shows them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import GradfilterError
from ..outputs import run_record_path
from . import REPORT_NAME
from .finetune_page import finetune_page
from .judge_page import judge_page
from .noise_page import noise_page
from .page import Html, Page, details, facts, json_block, write_page
from .selection import read_json


def results_file(path: Path) -> Path | None:
    """A benchmark's results.json: `path` itself (a .json file) or the one inside `path` (an
    output directory); None for anything else (a statistics table)."""
    path = Path(path)
    if path.is_dir() and (path / "results.json").is_file():
        return path / "results.json"
    if path.suffix == ".json" and path.is_file():
        return path
    return None


def write_benchmark_report(results: Path, out: Path | None = None) -> Path:
    """The page of a benchmark (`results`: its output directory, or its results.json),
    written to `out` (default: report.html beside the results)."""
    results = Path(results)
    results_path = results / "results.json" if results.is_dir() else results
    return write_page(Path(out) if out is not None else results_path.parent / REPORT_NAME,
                      benchmark_page(results_path))


def benchmark_page(results_path: Path) -> Page:
    """The page of the results at `results_path`; the files they name are found relative to
    its directory."""
    out_dir = results_path.parent
    results = read_json(results_path)
    if results is None:
        raise GradfilterError(f"{results_path}: no benchmark results here (a JSON object "
                              "written by gradfilter bench)")
    record = read_json(run_record_path(results_path)) or {}
    kind = benchmark_kind(results, record)
    page = ADAPTERS[kind](results, record, out_dir)
    page.add("files", "Files", _files(out_dir, results, record))
    page.footer = [f"Built by gradfilter report from {results_path} and the files it names. "
                   "No script and no request: the page works offline, from file://."]
    return page


def benchmark_kind(results: dict, record: dict) -> str:
    stage = str(record.get("stage", ""))
    for kind in ADAPTERS:
        if stage == f"bench {kind}" or results.get("benchmark") == kind:
            return kind
    if "corrupt_fraction" in results:
        return "noise"
    if "finetune" in results:
        return "finetune"
    raise GradfilterError("results.json: not the results of bench noise, finetune or judge")


def _files(out_dir: Path, results: dict, record: dict) -> Html:
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    return Html(facts([("directory", str(out_dir)), ("files", ", ".join(names))])
                + details("results.json", json_block(results, limit=30_000))
                + (details("its run record", json_block(record)) if record else ""))


ADAPTERS: dict[str, Callable[[dict, dict, Path], Page]] = {
    "noise": noise_page, "finetune": finetune_page, "judge": judge_page}
