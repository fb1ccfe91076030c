"""Matplotlib figures as inline images: SVG data URIs, text kept as text (small, sharp,
searchable), no date stamped in them, so a page rebuilt from the same files is the same.

Figures draw what `measures` computed already (a histogram's counts, a curve's points): a page
of a million records holds a few dozen bars per figure, never the records."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .measures import Histogram

KEPT, DROPPED, ALL = "#1f6fb2", "#c0562b", "#5b6474"
GROUP_COLOURS = {"kept": KEPT, "dropped": DROPPED, "all": ALL, "clean": KEPT,
                 "corrupted": DROPPED}
SMALL = (5.4, 2.7)
WIDE = (9.0, 3.4)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "gradfilter",
                         "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def to_data_uri(fig) -> str:
    """The figure as an SVG data URI (the figure is closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    finally:
        plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_figure(hist: Histogram, title: str, xlabel: str, cut: float | None = None,
                     share: bool = False, size: tuple[float, float] = SMALL) -> str:
    """Bars of one group, or each group's outline over the same bins (as a share of the group
    with `share`, so a 10% subset and the other 90% compare by shape); a dashed line at `cut`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    edges = hist.edges
    widths, lefts = np.diff(edges), edges[:-1]
    single = len(hist.counts) == 1
    for name, counts in hist.counts.items():
        total = counts.sum() + hist.below.get(name, 0) + hist.above.get(name, 0)
        heights = counts / total if share and total else counts
        colour = GROUP_COLOURS.get(name)
        label = f"{name} ({int(total):,})"
        if single:
            ax.bar(lefts, heights, width=widths, align="edge", color=colour or ALL,
                   edgecolor="white", linewidth=0.3, label=label)
        else:
            ax.stairs(heights, edges, fill=True, alpha=0.25, color=colour)
            ax.stairs(heights, edges, color=colour, linewidth=1.2, label=label)
    if cut is not None and np.isfinite(cut):
        ax.axvline(cut, color="#111111", linestyle="--", linewidth=1.1,
                   label=f"cut {cut:.4g}")
    ax.set(title=title, xlabel=xlabel, ylabel="share of group" if share else "records")
    ax.legend(fontsize=7, frameon=False)
    return to_data_uri(fig)


@dataclass(frozen=True)
class Series:
    """One line: its points, and a band (low..high) drawn around it, or error bars."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    dashed: bool = False
    errorbars: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    reference: tuple[float, str] | None = None  # a horizontal line and its label
    percent_x: bool = False
    percent_y: bool = False


def lines_figure(panels: Sequence[Panel]) -> str:
    """Panels side by side, each with its lines, bands or error bars and a reference line."""
    plt = _pyplot()
    columns = max(1, len(panels))
    fig, axes = plt.subplots(1, columns, figsize=(min(5.0 * columns, 15.0), 3.6),
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=True):
        _draw_panel(ax, panel)
    fig.tight_layout()
    return to_data_uri(fig)


def _draw_panel(ax, panel: Panel) -> None:
    from matplotlib.ticker import PercentFormatter

    for series in panel.series:
        x, y = np.asarray(series.x, float), np.asarray(series.y, float)
        style = "--" if series.dashed else "-"
        if series.errorbars and series.low is not None and series.high is not None:
            low, high = np.asarray(series.low, float), np.asarray(series.high, float)
            ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o" + style, markersize=3,
                        capsize=3, linewidth=1, label=series.name)
            continue
        line, = ax.plot(x, y, style, linewidth=1.3, label=series.name)
        if series.low is not None and series.high is not None:
            ax.fill_between(x, np.asarray(series.low, float), np.asarray(series.high, float),
                            color=line.get_color(), alpha=0.15, linewidth=0)
    if panel.reference is not None:
        value, label = panel.reference
        ax.axhline(value, color="#111111", linestyle=":", linewidth=1, label=label)
    if panel.percent_x:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    if panel.percent_y:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
    ax.legend(fontsize=7, frameon=False)


def outcome_bars(rows: Sequence[tuple[str, int, int, int]], title: str,
                 names: tuple[str, str, str] = ("wins", "ties", "losses")) -> str:
    """Horizontal stacked bars, one per row: the shares of its three outcomes, counts written
    in the segments."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDE[0], 0.45 * len(rows) + 1.2))
    colours = (KEPT, "#b9bec8", DROPPED)
    labels = [row[0] for row in rows]
    totals = np.array([max(1, sum(row[1:])) for row in rows], dtype=float)
    left = np.zeros(len(rows))
    for k, (name, colour) in enumerate(zip(names, colours, strict=True)):
        counts = np.array([row[k + 1] for row in rows], dtype=float)
        shares = counts / totals
        ax.barh(labels, shares, left=left, color=colour, label=name, height=0.6)
        for y, (share, count, start) in enumerate(zip(shares, counts, left, strict=True)):
            if share >= 0.06:
                ax.text(start + share / 2, y, f"{int(count)}", ha="center", va="center",
                        fontsize=7, color="white" if colour != "#b9bec8" else "#1d2330")
        left += shares
    ax.axvline(0.5, color="#111111", linestyle=":", linewidth=0.8)
    ax.set(title=title, xlim=(0, 1), xlabel="share of judged prompts")
    ax.invert_yaxis()
    ax.legend(fontsize=7, frameon=False, ncols=3, loc="lower right",
              bbox_to_anchor=(1.0, 1.0))
    return to_data_uri(fig)
