"""The selection page's "Cost" section (`costs.pool_cost`; issue 34, "is selecting worth it?"):
what scoring the table cost, from its metadata, its token counts and its run record; one epoch of
fine-tuning on the full pool against one on the kept subset; and whether the selection paid for
itself. The table's `n_tokens` are counted; a table without them is counted in response tokens
(`costs.RESPONSE_ONLY`, said on the page)."""

from __future__ import annotations

import numpy as np

from ..bench.costs import break_even_text, pool_cost, work_from
from .page import Html, esc, paragraph, table
from .selection import SelectionView

NOT_RECORDED = "not recorded"
NOTE = ("Row-tokens: one token of one sequence through a model once, a forward and backward "
        "pass counted once. Fine-tuning is one epoch (forward+backward) over the records; at E "
        "epochs both sides grow E-fold. The break-even counts every row-token alike (a forward "
        "one as a whole one, so the selection's side is overstated); a proxy token costs less "
        "than a larger target's by about the models' sizes (docs/method.md).")


def cost_section(view: SelectionView) -> list[Html]:
    """The cost table (scoring, full pool, kept subset) and the break-even in words."""
    columns = view.record_columns
    counts = columns.get("n_tokens", columns.get("n_response_tokens"))
    if counts is None:
        return [paragraph("The table holds no token counts (n_tokens, n_response_tokens): what "
                          "scoring and fine-tuning cost is not known.", "note")]
    tokens = np.nan_to_num(counts).astype(np.int64)
    response = np.nan_to_num(columns.get("n_response_tokens", counts)).astype(np.int64)
    scored = np.ones(view.n, dtype=bool)
    scored[[i for i, _ in view.skip_reasons]] = False
    work = work_from(view.meta, view.table_record, str(view.sources.table))
    cost = pool_cost(work, tokens, response, scored, view.kept, "n_tokens" in columns)
    scoring = cost["scoring"]
    record = view.table_record is not None
    parameters = None if scoring is None else scoring["proxy_parameters"]
    rows = [*_scoring_rows(scoring, record),
            ["one epoch on the full pool (the scored records)", cost["full_pool_records"],
             cost["full_pool_row_tokens"], "-", "-"],
            ["one epoch on the kept subset", cost["kept_records"], cost["kept_row_tokens"],
             "-", "-"]]
    verdict = break_even_text(cost["selection_row_tokens"], cost["kept_row_tokens"],
                              cost["full_pool_row_tokens"], parameters)
    proxy = (f"Proxy {scoring['proxy']}: "
             + (f"{parameters:,} parameters" if parameters else
                "parameter count not recorded" + ("" if record else " (no run record)"))
             + "." if scoring is not None else "")
    return [paragraph(NOTE, "note"),
            paragraph(f"Tokens: {cost['tokens']}.", "note"),
            table(["what", "records", "row-tokens", "wall time", "device"], rows,
                  table_id="cost-table"),
            Html(f'<p id="break-even">{esc(proxy)} {esc(verdict)}</p>')]


def _scoring_rows(scoring: dict | None, record: bool) -> list[list[object]]:
    """Scoring this table: forward+backward and forward row-tokens, wall time and device from
    its run record ("not recorded" where there is none, or the metadata does not say)."""
    if scoring is None:
        return [["scoring this table", "-", NOT_RECORDED + " (the table's metadata does not say "
                 "how it was scored)", NOT_RECORDED, NOT_RECORDED]]
    wall = scoring["wall_seconds"]
    seconds = NOT_RECORDED if wall is None else f"{wall:,.1f} s"
    device = scoring["device"] or NOT_RECORDED
    if not record:
        seconds, device = NOT_RECORDED + " (no run record)", NOT_RECORDED
    method, records = scoring["method"], scoring["scored_records"]
    if scoring["free"]:
        return [[f"scoring this table ({method}: no model pass, free)", records, 0, seconds,
                 device]]
    rows: list[list[object]] = []
    if method == "gsnr":
        passes = (f"{scoring['members']} members x {scoring['epochs']} epochs"
                  + (", with the snapshot's gradient passes"
                     if scoring["collect"] == "snapshot" else ""))
        rows.append([f"scoring this table (gsnr: {passes}), forward+backward", records,
                     scoring["forward_backward_row_tokens"], seconds, device])
        if scoring["ifd_pass"]:
            rows.append(["scoring this table (gsnr: its IFD pass), forward", records,
                         scoring["forward_row_tokens"], "(in the above)", device])
        return rows
    return [[f"scoring this table ({method}), forward", records, scoring["forward_row_tokens"],
             seconds, device]]

