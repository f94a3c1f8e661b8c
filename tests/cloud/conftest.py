"""Fixtures of the cloud's tests (the code behind them is in tests/helpers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.browser import chromium_page


@pytest.fixture
def page() -> Iterator[Any]:
    """A page of headless Debian chromium (tests/helpers/browser.py)."""
    with chromium_page() as pg:
        yield pg
