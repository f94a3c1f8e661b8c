"""Fixtures the edge's tests share."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.edge import pins


@pytest.fixture
def pin_root() -> Iterator[Path]:
    """A pin directory of this test's own (the node's is /sys/fs/bpf/pxo), removed afterwards."""
    root = pins.PIN_ROOT.parent / f"pxo-test-{uuid.uuid4().hex[:8]}"
    yield root
    pins.remove(root)
