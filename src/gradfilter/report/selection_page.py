"""A selection's page, section by section, from a `SelectionView`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import plots
from .measures import agreement, histogram, quantiles, reason_groups, wilson
from .page import (
    Html,
    Page,
    Share,
    badge,
    details,
    esc,
    facts,
    figure,
    folded_text,
    grid,
    json_block,
    number,
    paragraph,
    table,
    warning,
    write_page,
)
from .records import TEXT_LIMIT
from .selection import SelectionSources, SelectionView, build_view, cheap_baselines, shown_records
from .selection_cost import cost_section

SHOWN_CHARS = 400


def write_selection_report(sources: SelectionSources, out: Path) -> Path:
    """Build the page of a selection from its files and write it to `out` (atomically)."""
    return write_page(Path(out), selection_page(build_view(sources)))


def selection_page(view: SelectionView) -> Page:
    kept = len(view.selection.indices)
    page = Page(f"Selection report: {kept:,} of {view.n:,} records kept by {view.utility}",
                lead=_budget_line(view))
    page.add("summary", "Summary", _summary(view), *[warning(n) for n in view.notes])
    page.add("run", "What was asked, and the run record", *_run_section(view))
    page.add("scores", f"Scores of {view.utility}", *_score_section(view))
    page.add("kept-dropped", "Kept against dropped", *_kept_dropped_section(view))
    if view.strata is not None:
        page.add("strata", "The strata the budget was spread over", *_strata_section(view))
    if view.other_scores:
        page.add("utilities", "The other utilities and baselines in the table",
                 *_others_section(view))
    page.add("agreement", "Agreement with the cheap baselines", *_agreement_section(view))
    if view.dedup_report is not None:
        page.add("diversity", "What near-duplicate removal changed", *_diversity_section(view))
    page.add("cost", "Cost: is selecting worth it?", *cost_section(view))
    page.add("records", "Records", *_records_section(view))
    page.footer = _footer(view)
    return page


def _budget_line(view: SelectionView) -> str:
    return (f"Ranked by {view.utility} ({_budget(view)}); built from {view.sources.table}"
            + (f" and {view.data}" if view.data else "") + ".")


def _budget(view: SelectionView) -> str:
    """ratio / count, the threshold, and the strata, as asked."""
    parts = [f"ratio {view.ratio:g}" if view.ratio is not None else
             f"count {view.count}" if view.count is not None else ""]
    if view.threshold is not None:
        parts.append(f"scores at or above {view.threshold:g}")
    if view.strata is not None:
        parts.append(f"stratified by {_strata_by(view.strata)}, {view.strata['allocation']} "
                     f"allocation, {view.strata['within']} within")
    return ", ".join(p for p in parts if p)


def _summary(view: SelectionView) -> Html:
    kept = len(view.selection.indices)
    unscored = int((~np.isfinite(view.scores)).sum())
    return Html(
        f'<p class="lead">Kept <strong id="kept-count">{kept:,}</strong> of '
        f'<strong id="records-count">{view.n:,}</strong> records; dropped '
        f'<strong id="dropped-count">{view.n - kept:,}</strong>, of which '
        f'<strong id="unscored-count">{unscored:,}</strong> have no finite score (unscorable, '
        "or outside a gated utility's gate) and are never kept.</p>")


# --- the run record --------------------------------------------------------------------------

def _run_section(view: SelectionView) -> list[Html]:
    meta, config = view.meta, view.meta.get("config") or {}
    table_record, subset_record = view.table_record or {}, view.subset_record or {}
    versions = table_record.get("versions") or subset_record.get("versions") or {}
    diversity = "none"
    if view.dedup_report is not None:
        diversity = f"dedup at cosine >= {view.dedup_report.threshold:g}"
    items = [
        ("data", view.data or table_record.get("data") or "not given"),
        *[(f"data {name}", value) for name, value in _fingerprints(
            [meta, table_record, subset_record])],
        ("format", view.facts.format if view.facts else table_record.get("format")),
        ("statistics table", str(view.sources.table)),
        ("subset", str(view.sources.subset) if view.sources.subset else None),
        ("method", meta.get("method")),
        ("ranking utility", view.utility),
        ("budget", _budget(view)),
        ("requested / kept", f"{view.selection.requested:,} / "
                             f"{len(view.selection.indices):,}"),
        ("diversity", diversity),
        ("proxy", config.get("proxy")),
        ("members", meta.get("members", config.get("members"))),
        ("epochs (early, late)", _epochs(meta, config)),
        ("LoRA rank / alpha", _pair(config, "lora_rank", "lora_alpha")),
        ("lr / batch size", _pair(config, "lr", "batch_size")),
        ("max length / template / turns", _triple(config, "max_length", "template", "turns")),
        ("seeds", table_record.get("seeds") or config.get("seed")),
        ("device / dtype", _device(table_record)),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or None),
        ("scoring wall time", _seconds(table_record.get("wall_seconds"))),
    ]
    parts = [facts((name, value) for name, value in items if value not in (None, ""))]
    for name, record in (("the table's run record", view.table_record),
                         ("the subset's run record", view.subset_record)):
        if record:
            parts.append(details(f"{name} (JSON)", json_block(record)))
    if meta:
        parts.append(details("the table's metadata (JSON)", json_block(meta)))
    return parts


def _fingerprints(records: list[dict]) -> list[tuple[str, str]]:
    """Fields that identify the data (a fingerprint, a hash), wherever a record holds one."""
    found: dict[str, str] = {}
    for record in records:
        for key, value in record.items():
            lowered = key.lower()
            if any(word in lowered for word in ("fingerprint", "sha256", "digest")):
                found.setdefault(key.replace("_", " "), str(value)[:200])
    return list(found.items())


def _epochs(meta: dict, config: dict) -> str | None:
    if "early" in meta or "early" in config:
        return (f"{config.get('epochs', '?')} ({meta.get('early', config.get('early'))}, "
                f"{meta.get('late', config.get('late'))})")
    return None


def _pair(config: dict, a: str, b: str) -> str | None:
    return f"{config[a]} / {config[b]}" if a in config and b in config else None


def _triple(config: dict, a: str, b: str, c: str) -> str | None:
    if not all(k in config for k in (a, b, c)):
        return None
    return f"{config[a]} / {config[b]} / {config[c]}"


def _device(record: dict) -> str | None:
    device = record.get("device")
    if isinstance(device, dict):
        device = device.get("gpu") or device.get("device")
    return f"{device} / {record.get('dtype')}" if device else None


def _seconds(wall: object) -> str | None:
    if not isinstance(wall, dict):
        return None
    total = sum(v for v in wall.values() if isinstance(v, int | float))
    return f"{total:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in wall.items()
                                           if isinstance(v, int | float)) + ")"


# --- scores ----------------------------------------------------------------------------------

def _groups(view: SelectionView) -> dict[str, np.ndarray]:
    return {"kept": view.kept, "dropped": ~view.kept}


def _score_section(view: SelectionView) -> list[Html]:
    hist = histogram(view.scores, _groups(view))
    cut = view.cut
    image = plots.histogram_figure(hist, f"{view.utility}: kept and dropped", view.utility,
                                   cut=cut, size=plots.WIDE)
    caption = (f"Every record's {view.utility} score, kept ones in blue; the dashed line is "
               f"the lowest kept score ({number(cut)})." if cut is not None else
               "Nothing was kept.")
    outside = hist.outside_note()
    missing = int((~np.isfinite(view.scores)).sum())
    caption += (f" {outside}." if outside else "") + (
        f" {missing:,} records have no finite score and are not drawn." if missing else "")
    finite = np.isfinite(view.scores)
    rows = [[name, int((mask & finite).sum()), *quantiles(view.scores, mask)]
            for name, mask in _groups(view).items()]
    return [figure(image, f"Histogram of {view.utility} with the cut", caption,
                   figure_id="score-histogram"),
            table(["group", "records", "10th pct", "median", "90th pct"], rows,
                  caption=f"{view.utility}, finite scores only")]


# --- kept against dropped --------------------------------------------------------------------

def _measures(view: SelectionView) -> list[tuple[str, np.ndarray, bool]]:
    """(name, per-record values, integer) of every length-like measure the files give."""
    found = []
    if "n_response_tokens" in view.record_columns:
        tokens = view.record_columns["n_response_tokens"].copy()
        tokens[[i for i, _ in view.skip_reasons]] = np.nan
        found.append(("response tokens (as scored)", tokens, True))
    if view.facts is not None:
        found += [("response characters", view.facts.response_chars, False),
                  ("prompt characters", view.facts.prompt_chars, False),
                  ("turns", view.facts.turns, True)]
    return found


def _kept_dropped_section(view: SelectionView) -> list[Html]:
    groups = _groups(view)
    rows, images = [], []
    for name, values, integer in _measures(view):
        rows.append([name, *quantiles(values, view.kept), *quantiles(values, ~view.kept)])
        finite = values[np.isfinite(values)]
        if not len(finite) or finite.min() == finite.max():
            continue  # one value: the table says it all
        hist = histogram(values, groups, integer=integer)
        images.append(figure(plots.histogram_figure(hist, name, name, share=True),
                             f"Histogram of {name}, kept and dropped",
                             "Share of each group per bin. " + hist.outside_note()))
    if "truncated" in view.record_columns:
        truncated = view.record_columns["truncated"] > 0
        kept_share = truncated[view.kept].mean() if view.kept.any() else math.nan
        dropped_share = truncated[~view.kept].mean() if (~view.kept).any() else math.nan
        rows.append(["truncated at max length (share)", "", Share(kept_share), "", "",
                     Share(dropped_share), ""])
    parts: list[Html] = []
    if rows:
        parts.append(table(["measure", "kept 10th", "kept median", "kept 90th", "dropped 10th",
                            "dropped median", "dropped 90th"], rows, table_id="lengths"))
    parts.append(grid(images))
    if view.data_note:
        parts.append(paragraph(view.data_note, "note"))
    parts += _categories(view) + _unscorable(view) + _labels_part(view)
    return parts


def _categories(view: SelectionView) -> list[Html]:
    if view.facts is None or not view.facts.categories:
        return []
    parts = [Html("<h3>Fields</h3>"),
             paragraph("Fields with at most 20 distinct values (a source, a task, a language), "
                       "and whether a record has a system prompt (or, in Alpaca, an input).",
                       "note")]
    kept_total, dropped_total = int(view.kept.sum()), int((~view.kept).sum())
    for name, category in view.facts.categories.items():
        rows = []
        for code, value in [*enumerate(category.values), (-1, "(absent)")]:
            where = category.codes == code
            k, d = int((where & view.kept).sum()), int((where & ~view.kept).sum())
            if k or d:
                rows.append([value, k, d, Share(k / kept_total if kept_total else math.nan),
                             Share(d / dropped_total if dropped_total else math.nan)])
        parts.append(table([name, "kept", "dropped", "share of kept", "share of dropped"],
                           rows))
    return parts


def _unscorable(view: SelectionView) -> list[Html]:
    count = len(view.skip_reasons)
    parts = [Html("<h3>Unscorable records</h3>"),
             paragraph(f"{count:,} of {view.n:,} records ({count / max(view.n, 1):.1%}) could "
                       "not be scored; they are never kept.")]
    if count:
        parts.append(table(["reason (the first record's)", "records", "first record"],
                           reason_groups(view.skip_reasons), table_id="unscorable"))
    if view.facts is not None and view.facts.unreadable:
        parts.append(paragraph(f"{view.facts.unreadable:,} records of the data could not be "
                               "read as a conversation.", "note"))
    return parts


def _labels_part(view: SelectionView) -> list[Html]:
    """Kept share of each corruption kind against the pool's (random's expectation)."""
    if view.labels is None:
        return []
    kept = int(view.kept.sum())
    rows = []
    for kind in ["(any)", *sorted(set(view.labels) - {""})]:
        flag = view.labels != "" if kind == "(any)" else view.labels == kind
        share, low, high = wilson(int((flag & view.kept).sum()), kept)
        rows.append([kind, int(flag.sum()), int((flag & view.kept).sum()),
                     Html(f"{share:.1%} [{low:.1%}, {high:.1%}]" if kept else "n/a"),
                     Share(flag.mean())])
    return [Html("<h3>Records corrupted on purpose (labels)</h3>"),
            table(["kind", "in the pool", "kept", "share of kept [95% Wilson]",
                   "share of the pool (random's expectation)"], rows, table_id="labels")]


# --- other scores, agreement, diversity ------------------------------------------------------

def _others_section(view: SelectionView) -> list[Html]:
    images = []
    for name, values in view.other_scores.items():
        hist = histogram(values, _groups(view))
        images.append(figure(plots.histogram_figure(hist, name, name, share=True),
                             f"Histogram of {name}, split by what {view.utility} kept",
                             hist.outside_note() or None))
    return [paragraph(f"Each score the table carries, split into the records {view.utility} "
                      "kept and dropped (share of each group per bin).", "note"), grid(images)]


def _agreement_section(view: SelectionView) -> list[Html]:
    baselines = cheap_baselines(view)
    if not baselines:
        return [paragraph("The table holds no cheap baseline (IFD, loss, perplexity, length) "
                          "to compare with.", "note")]
    k = len(view.selection.indices)
    rows = []
    for name, values in baselines.items():
        a = agreement(view.scores, values, k)
        rows.append([name, a.records,
                     Html(f"{a.rho:+.3f} [{a.low:+.3f}, {a.high:+.3f}]"
                          if math.isfinite(a.low) else esc(number(a.rho, 3))),
                     Html(f"{a.overlap:,} of {a.k:,} ({a.overlap / a.k:.1%})" if a.k else "n/a"),
                     a.expected_overlap])
    return [table(["baseline", "records scored by both", "Spearman [95% CI]",
                   f"top-{k:,} overlap", "overlap of two random selections (expected)"], rows,
                  table_id="agreement"),
            paragraph("Spearman: rank correlation over the records both score (Fisher's z "
                      "interval). Top-k overlap: records both rankings keep at this budget "
                      "(dedup aside), against what two unrelated selections share.", "note")]


def _diversity_section(view: SelectionView) -> list[Html]:
    report, plain = view.dedup_report, view.plain
    assert report is not None and plain is not None
    plain_set, final = set(plain.indices.tolist()), set(view.selection.indices.tolist())
    brought = np.array(sorted(final - plain_set), dtype=np.int64)
    lowest = float(np.min(view.scores[brought])) if len(brought) else math.nan
    items = [("threshold", f"cosine >= {report.threshold:g} ({report.similarity})"),
             ("removed as near-duplicates", f"{report.removed:,} of {report.processed:,} looked "
                                            "at"),
             ("left plain top-k", f"{len(plain_set - final):,}"),
             ("brought in below plain top-k's cut",
              f"{len(brought):,} (lowest score {number(lowest)})")]
    rows = [[g["kept"], g["removed_count"], ", ".join(map(str, g["removed"][:10]))]
            for g in report.groups]
    return [facts(items),
            table(["kept record", "near-duplicates removed", "removed records (first 10)"],
                  rows, caption="the largest groups; their texts are under Records"),
            _diversity_lengths(view, plain)]


def _diversity_lengths(view: SelectionView, plain) -> Html:
    """Plain top-k's lengths against dedup's."""
    in_plain = np.zeros(view.n, dtype=bool)
    in_plain[plain.indices] = True
    rows = [[name, *quantiles(values, in_plain), *quantiles(values, view.kept)]
            for name, values, _ in _measures(view)]
    return table(["measure", "plain 10th", "plain median", "plain 90th", "dedup 10th",
                  "dedup median", "dedup 90th"], rows) if rows else Html("")


# --- strata ----------------------------------------------------------------------------------

def _strata_by(strata: dict) -> str:
    if strata["by"] == "field":
        return f"the field {strata.get('field')!r}"
    if strata["by"] == "length":
        return f"{strata.get('bins')} bins of response length"
    return f"{strata.get('k')} clusters of the training trajectories"


def _strata_section(view: SelectionView) -> list[Html]:
    """How the strata were made, and what each held and gave."""
    strata = view.strata
    assert strata is not None
    items = [("by", _strata_by(strata)), ("allocation", strata["allocation"]),
             ("within a stratum", strata["within"]),
             ("strata taken whole", f"{strata['taken_whole']} of {len(strata['strata'])}")]
    if strata["by"] == "clusters":
        items += [("K", f"{strata['k']} ({strata.get('k_rule')})"),
                  ("features", f"{strata.get('features')}: "
                               f"{', '.join(strata.get('columns') or [])}"),
                  ("k-means", strata.get("algorithm")),
                  ("records clustered", strata.get("clustered")),
                  ("empty clusters", strata.get("empty_clusters")), ("seed", strata.get("seed"))]
    if strata["by"] == "length":
        items.append(("inner edges (response tokens)",
                      ", ".join(f"{e:g}" for e in strata.get("edges") or []) or "none"))
    rows = [[str(s["stratum"]), s["pool"], s["eligible"], s["taken"],
             Share(s["taken"] / s["pool"] if s["pool"] else math.nan)]
            for s in strata["strata"]]
    return [facts((name, value) for name, value in items if value not in (None, "")),
            table(["stratum", "pool records", "eligible (at or above the threshold)", "taken",
                   "share of the stratum taken"], rows, table_id="strata"),
            paragraph("The pool: the records with a finite score. Even allocation takes strata "
                      "smaller than their share whole and shares the rest evenly (S2L); "
                      "proportional keeps the pool's shares (docs/method.md, Selection).",
                      "note")]


# --- records ---------------------------------------------------------------------------------

def _records_section(view: SelectionView) -> list[Html]:
    if view.facts is None:
        return [paragraph(view.data_note or "no data", "note")]
    ranks = np.full(view.n, -1, dtype=np.int64)
    ranks[view.selection.ranked] = np.arange(len(view.selection.ranked))
    parts = []
    for title, rows in shown_records(view).items():
        ident = "records-" + title.replace(" ", "-")
        articles = "".join(_record(view, int(i), int(ranks[i])) for i in rows)
        parts.append(Html(f'<h3>{esc(title.capitalize())} ({len(rows)})</h3>'
                          f'<div id="{esc(ident)}">{articles}</div>'))
    return parts


def _record(view: SelectionView, index: int, rank: int) -> str:
    assert view.facts is not None
    example = view.facts.examples.get(index)
    kept = bool(view.kept[index])
    head = [f"#{index}", f"score {number(float(view.scores[index]))}",
            f"rank {rank + 1:,} of {len(view.selection.ranked):,}" if rank >= 0 else "unranked"]
    tags = [badge("kept" if kept else "dropped", "kept" if kept else "dropped")]
    if view.labels is not None and view.labels[index]:
        tags.append(badge(f"corrupted: {view.labels[index]}", "tag"))
    body: list[str] = []
    if example is None or example.error:
        body.append(str(paragraph(example.error if example else "not read", "note")))
    else:
        for turn in example.turns:
            text = turn.text + (f"\n[... {turn.length - TEXT_LIMIT:,} more characters]"
                                if turn.length > TEXT_LIMIT else "")
            body.append(f'<div class="turn"><div class="role">{esc(turn.role)}</div>'
                        f"{folded_text(text, SHOWN_CHARS, TEXT_LIMIT + 100)}</div>")
    return (f'<article class="record" data-index="{index}"><div class="head">'
            f'{esc(" · ".join(head))}{"".join(tags)}</div>{"".join(body)}</article>')


def _footer(view: SelectionView) -> list[str]:
    n = view.sources.examples
    return [f"Built by gradfilter report from files: {view.sources.table}"
            + (f", {view.data}" if view.data else "")
            + (f", {view.sources.subset}.run.json" if view.subset_record else "")
            + (f", {view.sources.labels}" if view.sources.labels else "") + ".",
            f"Bounded: {n} records at the top, around the cut and at the bottom; a turn's first "
            f"{SHOWN_CHARS} characters, up to {TEXT_LIMIT:,} behind 'more characters'. "
            "Histograms: 40 bins over the values' range, or their 0.5-99.5 percentile range "
            "where a tail stretches it more than tenfold (counts outside are stated).",
            "No script and no request: the page works offline, from file://."]
