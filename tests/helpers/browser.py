"""Debian's chromium, headless, driven by Playwright: the browser the web page's tests use."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    """Skip without chromium on a developer's machine; in CI (CI=true, where scripts/setup.sh
    installed it) fail instead, so a CI machine that lost it cannot pass silently."""
    if Path(CHROMIUM).exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true and Debian's chromium is not installed (scripts/setup.sh installs it)", pytrace=False)
    pytest.skip("Debian's chromium is not installed")


@contextmanager
def chromium_page(width: int = 1100, height: int = 1400) -> Iterator[Any]:
    """A page of a fresh headless browser, closed afterwards."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            # bypass_csp: the page's CSP forbids eval, which Playwright's evaluate and wait_for_function
            # use (the CSP itself is checked on the headers)
            yield browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
        finally:
            browser.close()
