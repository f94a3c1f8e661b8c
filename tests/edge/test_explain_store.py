"""What `pxo explain` says when the evidence is not there (edge/explain.py over a real DuckDB
store): a degraded source, a kill the kernel logged without its report, no eBPF (so no
cgroup), no samples; and that it refuses targets it cannot read."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pxo.edge import explain
from pxo.edge.sources import all_tables
from pxo.edge.store import Store
from tests.helpers.seeding import oom_row


def test_missing_evidence_is_named_and_no_verdict_is_guessed(tmp_path: Path) -> None:
    store = Store(tmp_path / "edge.duckdb", all_tables(), flush_interval=0.01)
    store.start()
    try:
        t = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=1)
        store.append("probe_status", {"time": t - dt.timedelta(minutes=3), "source": "oom", "state": "degraded",
                                      "detail": "eBPF disabled by configuration", "since": t, "events": 0,
                                      "lost": 0})
        store.append("oom_events", {**oom_row(515, t), "cgroup_path": None, "report_logged": False,
                                    "oom_id": "6b1c2d4e-0000-4000-8000-00000000abcd:7"})
        found = explain.find(store, "515")
        assert found is not None and found.kind == "oom"
        e = explain.explain(store, found)
    finally:
        store.close()
    assert [v.rule for v in e.verdicts] == ["none"]
    assert "pxo does not guess" in e.verdicts[0].sentence
    said = "\n".join(e.missing)
    assert "memory cgroup is unknown" in said
    assert "rate-limited its report" in said
    assert "source oom was degraded: eBPF disabled by configuration" in said
    assert e.series == [] and e.holders == []


@pytest.mark.parametrize("target", ["x y", "a/b/c/d", "12g45", "/"])
def test_unreadable_targets_are_refused(tmp_path: Path, target: str) -> None:
    store = Store(tmp_path / "edge.duckdb", all_tables(), flush_interval=0.01)
    store.start()
    try:
        if target == "/":
            assert explain.find(store, target) is None  # a path: read, and nothing matches
        else:
            with pytest.raises(ValueError, match="no target pxo knows"):
                explain.find(store, target)
    finally:
        store.close()
