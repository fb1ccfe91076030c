"""A real headless browser for the tests that look at a page as a person would (report pages,
rating sheets): Playwright for Python driving Debian's chromium (Playwright's own browser
download needs the internet, so it is not used).

`open_page` loads a file from file:// in a fresh browser context (its own storage) and records
what the page did: console messages, page errors and every request; a request that is not for
a file:, blob: or data: URL is aborted (and listed). `launch` starts one browser for several
pages. `screenshot` writes a full-page PNG under artifacts/ (gitignored) and prints its path,
for CI to keep.

Without /usr/bin/chromium (or Playwright) the tests that need it are skipped, unless
GRADFILTER_REQUIRE_BROWSER is set (as .ci/run sets it, after installing chromium): then its
absence is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
REQUIRED = os.environ.get("GRADFILTER_REQUIRE_BROWSER", "") not in ("", "0")
LOCAL = ("file:", "blob:", "data:")


@dataclass
class Opened:
    """A loaded page and what it did."""

    page: Any  # playwright.sync_api.Page
    url: str
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)  # uncaught page errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "warning")]

    def foreign_requests(self) -> list[str]:
        """Requests other than the page itself and inline data: a network request, a file."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


def _missing() -> str | None:
    if find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None and not REQUIRED,
                                   reason=str(_missing()))


def require_browser() -> None:
    missing = _missing()
    if missing is None:
        return
    if REQUIRED:
        pytest.fail(f"the browser tests need a browser: {missing}")
    pytest.skip(missing)


@contextmanager
def launch() -> Iterator[Any]:
    """A headless chromium (a Playwright Browser), closed at the end; pass it to `open_page`
    to open several pages without starting a browser for each."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(path: Path, browser: Any = None, width: int = 1280,
              height: int = 900) -> Iterator[Opened]:
    """Load `path` from file:// in a fresh context of `browser` (default: a new browser)."""
    if browser is None:
        with launch() as own, open_page(path, own, width, height) as opened:
            yield opened
        return
    url = Path(path).resolve().as_uri()
    context = browser.new_context(accept_downloads=True,
                                  viewport={"width": width, "height": height})
    try:
        context.route("**/*", lambda route: route.continue_()
                      if route.request.url.startswith(LOCAL) else route.abort())
        page = context.new_page()
        page.set_default_timeout(15_000)
        opened = Opened(page, url)
        page.on("console", lambda m: opened.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: opened.errors.append(str(e)))
        page.on("request", lambda r: opened.requests.append(r.url))
        page.goto(url, wait_until="load")
        yield opened
    finally:
        context.close()


def screenshot(opened: Opened, name: str) -> Path:
    """A full-page PNG of the page under artifacts/ (printed, so CI logs name it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    opened.page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def image_shown(opened: Opened, selector: str) -> bool:
    """Whether the image at `selector` is visible and decoded (a broken data URI has no
    natural width)."""
    locator = opened.page.locator(selector)
    if locator.count() != 1 or not locator.is_visible():
        return False
    return bool(locator.evaluate("img => img.complete && img.naturalWidth > 0"))
