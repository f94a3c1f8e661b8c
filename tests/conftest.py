"""Shared test fixtures: real processes on loopback, real DuckDB files, real eBPF. The code
behind them is in tests/helpers, which is the only place test modules import from.

Tests marked ``requires_bpf`` load eBPF programs and cause real OOM kills;
``requires_root`` ones create cgroups or mount filesystems. Without root (and
for the first, BCC and kernel headers) they are skipped on a developer's
machine and FAIL in CI (CI=true), so a CI machine that lost them cannot pass
silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.edge.prereqs import missing_for_bpf
from tests.helpers.kubeapi_apply import ApplyAPI
from tests.helpers.matrix import EarlyScenarios
from tests.helpers.services import Service, Stack

IN_CI = os.environ.get("CI", "").lower() == "true"
EARLY_SCENARIOS = pytest.StashKey[EarlyScenarios]()
MATRIX_TEST = "tests/kernels/test_matrix.py::test_scenarios_pass_on_a_fresh_node_of["


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the kernel matrix's guests now, beside the host's tests (tests/helpers/matrix.py
    EarlyScenarios); PXO_GUEST_EARLY=0 runs each in its test's turn instead."""
    suites = [item.callspec.params["suite"] for item in session.items
              if item.nodeid.startswith(MATRIX_TEST) and isinstance(item, pytest.Function)]
    if (suites and os.geteuid() == 0 and not session.config.option.collectonly
            and os.environ.get("PXO_GUEST_EARLY", "1") != "0"):
        session.config.stash[EARLY_SCENARIOS] = EarlyScenarios(suites)


def pytest_sessionfinish(session: pytest.Session) -> None:
    early = session.config.stash.get(EARLY_SCENARIOS, None)
    if early is not None:
        early.cancel()


@pytest.fixture
def early_scenarios(request: pytest.FixtureRequest) -> EarlyScenarios | None:
    return request.config.stash.get(EARLY_SCENARIOS, None)


def _bpf_missing() -> str:
    missing = missing_for_bpf()
    return "eBPF unavailable: " + "; ".join(missing) if missing else ""


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_bpf") is not None:
        reason = _bpf_missing()
    elif (mark := item.get_closest_marker("requires_root")) is not None:
        reason = f"needs root: {mark.args[0]}" if os.geteuid() != 0 else ""
    else:
        return
    if reason and IN_CI:
        pytest.fail(f"CI=true and this test cannot run here: {reason}", pytrace=False)
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
