"""Fixtures for the scope's browser tests: one real kvscope server per test module
(the bundled model, fp32), one headless Debian Chromium, and a fresh page per test
that fails the test on any uncaught JavaScript error."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_harness import running_server

try:
    from playwright import sync_api
except ImportError:  # the test module skips itself; nothing here runs
    sync_api = None

CHROMIUM = os.environ.get("KVSCOPE_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 30_000  # a lesson's engine run takes seconds on 2 CPU cores

if sync_api is not None:
    sync_api.expect.set_options(timeout=TIMEOUT_MS)


# module scope: Playwright's sync API keeps an event loop running on this thread while
# it is open, which would break later tests that call asyncio.run()
@pytest.fixture(scope="module")
def scope_server(loaded_fp32):
    with running_server(loaded_fp32) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        yield browser
        browser.close()


class Page:
    """A page on the test server; records uncaught errors for the fixture to check."""

    def __init__(self, browser, base: str, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900},
                                           base_url=base)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser, scope_server) -> Iterator:
    pages: list[Page] = []

    def make(width: int = 1280):
        page = Page(browser, scope_server.url, width)
        pages.append(page)
        return page.page

    yield make
    errors = [e for p in pages for e in p.errors]
    for p in pages:
        p.close()
    assert not errors, f"uncaught JavaScript errors: {errors}"


@pytest.fixture
def page(open_page):
    return open_page()
