"""Shared test fixtures: real processes on loopback, real DuckDB files, real eBPF. The code
behind them is in tests/helpers, which is the only place test modules import from.

Tests marked ``requires_bpf`` load eBPF programs and cause real OOM kills.
Without root, BCC or kernel headers they are skipped on a developer's machine
and FAIL in CI (CI=true), so a CI machine that lost BCC cannot pass silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.edge.prereqs import missing_for_bpf
from tests.helpers.kubeapi_apply import ApplyAPI
from tests.helpers.services import Service, Stack

IN_CI = os.environ.get("CI", "").lower() == "true"


def _bpf_missing() -> str:
    missing = missing_for_bpf()
    return "eBPF unavailable: " + "; ".join(missing) if missing else ""


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_bpf") is None:
        return
    reason = _bpf_missing()
    if reason and IN_CI:
        pytest.fail(f"CI=true and this test needs eBPF: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all at teardown."""
    started: list[Service] = []
    yield started
    for s in reversed(started):
        s.stop()


@pytest.fixture
def stack(tmp_path: Path, services: list[Service]) -> Stack:
    return Stack(tmp_path, services)


@pytest.fixture
def api() -> Iterator[ApplyAPI]:
    """The loopback Kubernetes API server the deploy tests point `pxo` at (tests/helpers/kubeapi_apply.py)."""
    with ApplyAPI() as a:
        yield a
