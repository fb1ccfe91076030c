"""A self-contained HTML page: inline CSS, images as data URIs, no script, no request.

The page's Content-Security-Policy allows nothing but its own inline style and `data:`
images, so a browser that opens it from `file://` fetches nothing even where a record's text
spells a URL (every text is escaped; none becomes markup). The generator tag marks a page as
ours: an existing file at a report's path is replaced only if it carries the tag.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

from ..errors import GradfilterError
from ..outputs import atomic_path

GENERATOR = "gradfilter report"
_MARKER = f'<meta name="generator" content="{GENERATOR}'
_SNIFF_BYTES = 4096
_SURROGATE = re.compile("[\ud800-\udfff]")
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"



def stylesheet() -> str:
    """style.css: the one stylesheet of every page gradfilter writes (reports, the human
    results page, the rating sheets), inlined in each."""
    return resources.files("gradfilter.report").joinpath("style.css").read_text(encoding="utf-8")


CSS = stylesheet()


class Html(str):
    """Text that is markup already: put on the page as it is (every other text is escaped)."""


def esc(value: object) -> str:
    """`value` as HTML text; a lone surrogate (legal in JSON, not in UTF-8) becomes U+FFFD."""
    if isinstance(value, Html):
        return value
    return html.escape(_SURROGATE.sub("\ufffd", str(value)), quote=True)


def number(value: object, digits: int = 4) -> str:
    """A number as a reader wants it: integers whole, floats to `digits` significant digits,
    n/a for NaN or None."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


class Share(float):
    """A share, shown as a percentage."""


def _cell(value: object) -> str:
    if isinstance(value, Share):
        return f'<td class="num">{"n/a" if math.isnan(value) else f"{value:.1%}"}</td>'
    if isinstance(value, Html):
        return f"<td>{value}</td>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="num">{esc(number(value))}</td>'
    return f"<td>{esc(value)}</td>"


def table(head: Sequence[str], rows: Iterable[Sequence[object]], caption: str | None = None,
          table_id: str | None = None) -> Html:
    """A table; numbers are right-aligned and shortened, `Html` cells kept as markup."""
    ident = f' id="{esc(table_id)}"' if table_id else ""
    parts = [f"<table{ident}>"]
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>")
    parts.append("<tbody>")
    parts.extend("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    parts.append("</tbody></table>")
    return Html("".join(parts))


def facts(items: Iterable[tuple[str, object]]) -> Html:
    """Name and value pairs as a definition list (None values left out)."""
    rows = [f"<dt>{esc(name)}</dt><dd>{esc(value)}</dd>" for name, value in items
            if value is not None]
    return Html(f'<dl class="facts">{"".join(rows)}</dl>')


def paragraph(text: object, cls: str | None = None) -> Html:
    return Html(f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>")


def warning(text: object) -> Html:
    return Html(f'<p class="warning">{esc(text)}</p>')


def details(summary: object, body: object, is_open: bool = False) -> Html:
    state = " open" if is_open else ""
    return Html(f"<details{state}><summary>{esc(summary)}</summary>{esc(body)}</details>")


def badge(text: object, kind: str) -> Html:
    return Html(f'<span class="badge {kind}">{esc(text)}</span>')


def figure(image: str, alt: str, caption: object = None, figure_id: str | None = None) -> Html:
    """An image (a data URI from `plots`) with its text alternative and caption."""
    ident = f' id="{esc(figure_id)}"' if figure_id else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Html(f'<figure{ident}><img src="{esc(image)}" alt="{esc(alt)}">{cap}</figure>')


def grid(parts: Iterable[object]) -> Html:
    return Html('<div class="grid">' + "".join(esc(p) for p in parts) + "</div>")


def folded_text(text: str, shown: int = 400, limit: int = 4000) -> Html:
    """A record's text: whole when short; else its start, and the rest (up to `limit`
    characters, the cut said) behind a <details> a reader opens."""
    if len(text) <= shown:
        return Html(f'<div class="text">{esc(text)}</div>')
    rest = text[shown:limit]
    cut = (f"\n[... {len(text) - limit:,} more characters not shown]"
           if len(text) > limit else "")
    return Html(f'<div class="text">{esc(text[:shown])}<details><summary>'
                f"{len(text) - shown:,} more characters</summary>{esc(rest + cut)}"
                "</details></div>")


def json_block(value: object, limit: int = 20_000) -> Html:
    """A JSON document as preformatted text, cut at `limit` characters (the cut said)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit:,} more characters: see the file)"
    return Html(f"<pre>{esc(text)}</pre>")


@dataclass
class Section:
    ident: str
    title: str
    parts: list[Html]


@dataclass
class Page:
    """A page's title, lead line and sections, rendered to one HTML document."""

    title: str
    lead: str = ""
    sections: list[Section] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)

    def add(self, ident: str, title: str, *parts: object) -> None:
        self.sections.append(Section(ident, title, [Html(esc(p)) for p in parts]))

    def render(self) -> str:
        nav = "".join(f'<a href="#{esc(s.ident)}">{esc(s.title)}</a>' for s in self.sections)
        body = "".join(f'<section id="{esc(s.ident)}"><h2>{esc(s.title)}</h2>'
                       f'{"".join(s.parts)}</section>' for s in self.sections)
        foot = "".join(f"<p>{esc(line)}</p>" for line in self.footer)
        return document(self.title,
                        f"<header><h1>{esc(self.title)}</h1>"
                        f'<p class="lead" id="lead">{esc(self.lead)}</p><nav>{nav}</nav></header>'
                        f"<main>{body}</main><footer>{foot}</footer>")


def document(title: str, body: str) -> str:
    """An HTML document around `body` (markup): the generator tag, the policy, the one
    stylesheet."""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head>{_MARKER} {esc(_version())}">'
        '<meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"{body}</body></html>\n")


def _version() -> str:
    try:
        return metadata.version("gradfilter")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- writing ---------------------------------------------------------------------------------

def is_report(path: Path) -> bool:
    """Whether the file at `path` is a page this module wrote (its generator tag)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return _MARKER.encode() in head


def check_report_path(path: Path, label: str) -> None:
    """A one-line error, before any work, if the page cannot go to `path`: something there
    that is not an earlier page of ours (a user's file, a directory, a device)."""
    path = Path(path)
    if path.is_dir():
        raise GradfilterError(f"{path} ({label}) is an existing directory; the report is a "
                              "file")
    if path.exists() and not (path.is_file() and not path.is_symlink() and is_report(path)):
        raise GradfilterError(f"refusing to replace {path} ({label}): it is not a report "
                              "gradfilter wrote; move it or write the report elsewhere")


def write_page(path: Path, page: Page, label: str = "the report") -> Path:
    """The page to `path`, atomically, UTF-8; never over a file that is not an earlier page."""
    check_report_path(path, label)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(page.render().encode("utf-8", "replace"))
    return Path(path)
