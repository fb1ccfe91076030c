"""A real headless browser for the tests that look at a page as a person would: Playwright for
Python driving Debian's chromium (Playwright's own browser download needs the internet).

`open_page` loads a file from file:// and records what the page did: console messages, page
errors and every request. `screenshot` writes a full-page PNG under artifacts/ (gitignored)
and prints its path, for CI to keep.

Without /usr/bin/chromium the tests that need it are skipped, unless GRADFILTER_REQUIRE_BROWSER
is set (as .ci/run sets it, after installing chromium): then its absence is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
REQUIRED_ENV = "GRADFILTER_REQUIRE_BROWSER"


@dataclass
class Opened:
    """A loaded page and what it did while loading."""

    page: object  # playwright.sync_api.Page
    url: str
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)  # uncaught page errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "warning")]

    def foreign_requests(self) -> list[str]:
        """Requests other than the page itself and inline data: a network request, a file."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


def require_browser() -> None:
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get(REQUIRED_ENV):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def open_page(path: Path, width: int = 1280, height: int = 900) -> Iterator[Opened]:
    """Load `path` from file:// in headless chromium; the browser closes after the block."""
    require_browser()
    sync_api = pytest.importorskip("playwright.sync_api")
    url = Path(path).resolve().as_uri()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            opened = Opened(page, url)
            page.on("console", lambda m: opened.console.append((m.type, m.text)))
            page.on("pageerror", lambda e: opened.errors.append(str(e)))
            page.on("request", lambda r: opened.requests.append(r.url))
            page.goto(url, wait_until="load")
            yield opened
        finally:
            browser.close()


def screenshot(opened: Opened, name: str) -> Path:
    """A full-page PNG of the page under artifacts/ (printed, so CI logs name it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    opened.page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"screenshot: {path}")
    return path


def image_shown(opened: Opened, selector: str) -> bool:
    """Whether the image at `selector` is visible and decoded (a broken data URI has no
    natural width)."""
    page = opened.page
    locator = page.locator(selector)  # type: ignore[attr-defined]
    if locator.count() != 1 or not locator.is_visible():
        return False
    return bool(locator.evaluate("img => img.complete && img.naturalWidth > 0"))
