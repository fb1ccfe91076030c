"""What the commands print: one-line errors go to stderr, summaries to stdout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from ..data.quality import copies_of_earlier, records
from ..data.readers import ReadReport
from ..outputs import run_record_path
from ..subset import Subset

# Lines are never wrapped by rich (it wraps at 80 columns wherever stderr is not a terminal,
# breaking paths in logs): a terminal wraps long lines itself.
console = Console(stderr=True, soft_wrap=True)


def recoveries(report: ReadReport, notes: dict) -> list[str]:
    """What a run recovered from, one line each; the run record lists every record."""
    lines = [f"warning: {warning}" for warning in report.warnings]
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} unreadable records (kept in place, "
                     f"unscored), the first: {report.skipped[0]}")
    if notes.get("duplicate_ids"):
        lines.append(f"{len(notes['duplicate_ids'])} records repeat an earlier record's id "
                     "(all kept)")
    if notes.get("ends_on_prompt"):
        lines.append(f"{len(notes['ends_on_prompt'])} conversations end on a prompt turn "
                     "(scored; the unanswered tail carries no loss)")
    if notes.get("role_variants"):
        lines.append(role_variants_note(len(notes["role_variants"]), notes["role_variants"][0]))
    if notes.get("truncation") and notes["truncation"]["truncated_records"]:
        lines.append(truncation_note(notes["truncation"]))
    lines.extend(quality_notes(notes))
    return lines


def quality_notes(notes: dict) -> list[str]:
    """Records that were scored though they say less than they seem to."""
    lines = []
    if notes.get("duplicate_keys"):
        first, keys = next(iter(notes["duplicate_keys"].items()))
        lines.append(f"{records(len(notes['duplicate_keys']), 'has', 'have')} a key twice in "
                     f"one JSON object (the last value read; the first: record {first}, key "
                     f"{keys[0]!r})")
    if notes.get("empty_replies"):
        lines.append(f"{records(len(notes['empty_replies']), 'has', 'have')} an empty reply "
                     f"(scored; the first: record {notes['empty_replies'][0]})")
    copies = notes.get("exact_copies") or {}
    if copies.get("records"):
        lines.append(f"{copies_of_earlier(copies['records'])} (all kept); the most repeated, "
                     f"record {copies['most_copied']}, appears {copies['count']} times")
    return lines


def truncation_note(summary: dict) -> str:
    """The line for records longer than --max-length (`Tokenized.truncation`'s summary)."""
    cut, records = summary["truncated_records"], summary["records"]
    unseen, tokens = summary["response_tokens_unseen"], summary["response_tokens"]
    length = summary["max_length"]
    head = (f"truncated: {cut} of {records} records ({cut / records:.0%}) "
            f"{'is' if cut == 1 else 'are'} longer than --max-length {length}")
    share = f"{unseen / tokens:.1%}" if tokens else "0%"
    if summary["mode"] == "drop":
        return (f"{head}: left unscored (--truncation drop); their {unseen} response tokens "
                f"({share} of {tokens}) never seen")
    empty = summary.get("truncated_unscored", 0)
    left = f" ({empty} of them unscored: no response token left)" if empty else ""
    return (f"{head}: scored on their first {length} tokens{left}; {unseen} of {tokens} "
            f"response tokens ({share}) never seen (--truncation drop leaves such records "
            "unscored)")


def role_variants_note(count: int, first: int) -> str:
    """The recovery line for role names in another case or with spaces around them."""
    return (f"{count} {'record' if count == 1 else 'records'} had role names in another case or "
            f"with spaces (read as canonical; the first: record {first})")


def print_recoveries(report: ReadReport, notes: dict) -> None:
    for line in recoveries(report, notes):
        console.print(line, markup=False)


def print_selection(subset: Subset, out: Path, stats: Path | None,
                    notes: dict | None = None, tags: Sequence[str | None] | None = None,
                    report: Path | None = None) -> None:
    """What was kept, where everything went (the report page too, where one was written),
    what was recovered, the 3 best and worst (each with its tag, where `tags` gives one: the
    demo's corruption kinds)."""
    selection = subset.selection
    out_console = Console(soft_wrap=True)
    out_console.print(
        f"kept {len(selection.indices)} of {selection.n_records} records by {subset.utility} "
        f"(asked for {selection.requested}; {selection.n_nonfinite} without a finite score)")
    if not len(selection.indices):
        out_console.print(f"nothing kept: {subset.nothing_kept}; {out} holds no record",
                          markup=False)
    out_console.print(f"subset:           {out}\nstatistics table: {stats}\n"
                      f"run record:       {run_record_path(out)}")
    if report is not None:
        out_console.print(f"report page:      {report}", markup=False)
    for name, written in (subset.traces or {}).items():
        out_console.print(f"{name + ':':<18}{written['path']} ({written['records']} records)",
                          markup=False)
    for line in recoveries(subset.report, notes or {}):
        out_console.print(line, markup=False)
    if subset.data_check and subset.data_check.get("data_warning"):
        out_console.print(f"warning: {subset.data_check['data_warning']}", markup=False)
    if subset.strata is not None:
        out_console.print(strata_line(subset.strata), markup=False)
    if subset.diversity is not None:
        groups = subset.diversity["groups"]
        largest = (f"; largest group: #{groups[0]['kept']} kept, "
                   f"{groups[0]['removed_count']} removed" if groups else "")
        out_console.print(f"dedup removed {subset.diversity['removed']} near-duplicates "
                          f"(cosine >= {subset.diversity['threshold']:g}){largest}; groups in "
                          "the run record")
    for title, previews in (("best", subset.best), ("worst", subset.worst)):
        out_console.print(f"{title} {len(previews)} by {subset.utility}:")
        for preview in previews:
            head = f"  #{preview.index:<6} {preview.score:<10.4g} "
            tag = tags[preview.index] if tags is not None else None
            out_console.print(f"{head}user:  {preview.prompt}" +
                              (f"  [corrupted: {tag}]" if tag else ""), markup=False)
            if preview.answer:
                out_console.print(f"{'':<{len(head)}}reply: {preview.answer}", markup=False)


def strata_line(strata: dict) -> str:
    """One line on what --stratify did; every stratum's numbers are in the run record."""
    by = {"field": f"field {strata.get('field')!r}", "length": "response length",
          "clusters": "clusters"}[strata["by"]]
    how = f"{len(strata['strata'])} strata"
    if strata["by"] == "clusters":
        how = f"K = {strata['k']} ({strata['features']} features)"
    taken = [s["taken"] for s in strata["strata"]]
    spread = f"{min(taken)} to {max(taken)} a stratum" if taken else "none"
    return (f"stratified by {by}: {how}, {strata['allocation']} allocation, within by "
            f"{strata['within']}; kept {spread}, {strata['taken_whole']} taken whole; every "
            "stratum in the run record")
