"""A real headless browser for the tests of the pages gradfilter writes (rating sheets, reports).

Debian's chromium (/usr/bin/chromium, `apt-get install chromium`; .ci/run installs it) driven
by Playwright for Python; Playwright's own browser download needs the internet, so it is not
used. Where the browser or Playwright is missing the tests are skipped, unless
GRADFILTER_REQUIRE_BROWSER=1 (CI sets it): then they fail, so CI cannot pass without them.

    from browser import launch, needs_browser, open_page

    @needs_browser
    def test_page(tmp_path):
        with open_page(tmp_path / "page.html") as (page, requests):
            ...
        with launch() as browser:  # one browser, several pages
            for path in paths:
                with open_page(path, browser) as (page, requests):
                    ...
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("GRADFILTER_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
REQUIRED = os.environ.get("GRADFILTER_REQUIRE_BROWSER", "") not in ("", "0")


def _missing() -> str | None:
    if find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if shutil.which(CHROMIUM) is None:
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None and not REQUIRED,
                                   reason=str(_missing()))


@contextmanager
def launch() -> Iterator[Any]:
    """A headless chromium (a Playwright Browser), closed at the end; pass it to `open_page`
    to open several pages without starting a browser for each."""
    missing = _missing()
    if missing is not None:
        pytest.fail(f"the browser tests need a browser: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(path: Path, browser: Any = None) -> Iterator[tuple[Any, list[str]]]:
    """Open the local file `path` in a fresh browser context (its own storage: nothing kept
    from another page) of `browser` (default: a new one); yield (the Playwright page, every
    URL the page requested). A request that is not for a file:, blob: or data: URL is
    aborted, and listed."""
    if browser is None:
        with launch() as own, open_page(path, own) as opened:
            yield opened
        return
    requests: list[str] = []
    context = browser.new_context(accept_downloads=True)
    try:
        context.route("**/*", lambda route: route.continue_()
                      if route.request.url.startswith(("file:", "blob:", "data:"))
                      else route.abort())
        page = context.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.set_default_timeout(15_000)
        page.goto(Path(path).resolve().as_uri())
        yield page, requests
    finally:
        context.close()
