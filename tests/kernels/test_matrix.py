"""The kernel matrix in the suite: the real-kernel scenarios in a fresh guest of each kernel
named by PXO_KERNELS (default: bookworm, Debian 12's 6.1, the most common node kernel among
the ones pxo targets). scripts/kernel-matrix.sh runs all four and writes docs/kernels.md."""

from __future__ import annotations

import os

import pytest

from tests.helpers.guest import GuestError
from tests.helpers.matrix import EBPF_SOURCES, EarlyScenarios, run_scenarios

pytestmark = pytest.mark.requires_bpf  # root: qemu's virtiofsd serves the host's files as root

KERNELS = os.environ.get("PXO_KERNELS", "bookworm").split()


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("suite", KERNELS)
def test_scenarios_pass_on_a_fresh_node_of(suite: str, early_scenarios: EarlyScenarios | None) -> None:
    try:  # started when the session began, beside the host's tests (tests/conftest.py), unless PXO_GUEST_EARLY=0
        run = early_scenarios.result(suite) if early_scenarios is not None else run_scenarios(suite)
    except GuestError as exc:  # e.g. "run scripts/kernels.sh bookworm"
        pytest.fail(str(exc), pytrace=False)
    assert run.passed, f"{suite} {run.release}: the scenarios failed (exit {run.exit_code}):\n{run.output}"
    assert run.report is not None
    sources = run.report["sources"]
    assert all(sources[n]["state"] == "running" for n in EBPF_SOURCES), sources
    assert run.report["hierarchy"] == "v2"  # a fresh node: cgroup v2 only
    group = run.report["scenarios"]["group kill of 3"]
    assert group["rows"] == 3
