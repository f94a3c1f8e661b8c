"""The loopback Kubernetes API server the deploy tests point `pxo` at (tests/kubeapi_apply.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kubeapi_apply import ApplyAPI


@pytest.fixture
def api() -> Iterator[ApplyAPI]:
    with ApplyAPI() as a:
        yield a
