"""process_memory: exact values from a /proc fixture beside v1 and v2 cgroup
trees, and a real process holding a known allocation in a real cgroup."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pxo.edge.cgroups import Hierarchy, ScratchCgroup, memory_hierarchy
from pxo.edge.errors import EdgeError
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.procfs import PAGE_SIZE, PROCESS_MEMORY, ProcessMemorySource, memcg_of, parse_status
from tests.helpers.memtrees import CTR, PG, PROCS, MiB, write_proc, write_v1, write_v2
from tests.helpers.workloads import Holder

T0 = 1_764_000_000.0


class ListSink:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        assert table == "process_memory"
        self.rows.append(dict(row))

    def by_pid(self) -> dict[int, dict[str, Any]]:
        return {r["pid"]: r for r in self.rows}


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def hierarchy(request: pytest.FixtureRequest, tmp_path: Path) -> Hierarchy:
    if request.param == 1:
        return Hierarchy(1, write_v1(tmp_path / "memory"), frozenset({"rw", "memory"}))
    return Hierarchy(2, write_v2(tmp_path / "unified"), frozenset({"memory", "pids"}))


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return write_proc(tmp_path / "proc", page_size=PAGE_SIZE)


def sample_once(proc: Path, h: Hierarchy | None, **kwargs: Any) -> tuple[ProcessMemorySource, ListSink]:
    sink = ListSink()
    src = ProcessMemorySource(SourceContext(sink=sink, proc=proc, clock=lambda: T0), hierarchy=h, **kwargs)
    src.open()
    src.poll(0)
    return src, sink


def expected(pid: int, reason: str) -> dict[str, Any]:
    p = PROCS[pid]
    return {
        "time": dt.datetime(2025, 11, 24, 16, 0), "pid": pid, "ppid": p.ppid, "comm": p.name,
        "cgroup_path": p.cgroup, "rss_bytes": p.rss_kb * 1024, "anon_bytes": p.anon_kb * 1024,
        "file_bytes": p.file_kb * 1024, "shmem_bytes": p.shmem_kb * 1024, "swap_bytes": p.swap_kb * 1024,
        "oom_score": p.oom_score, "oom_score_adj": p.oom_score_adj, "reason": reason,
    }


def test_top_and_near_limit_exact_rows(proc: Path, hierarchy: Hierarchy) -> None:
    # Ranked by statm: 777 (4 GiB, exits before it is read), 1000, 1001, 4242, 1, 4243; kthreadd has no mm.
    src, sink = sample_once(proc, hierarchy, top_n=2)
    rows = sink.by_pid()
    assert sorted(rows) == [1000, 1001, 4242, 4243]
    assert rows[1000] == expected(1000, "top")
    assert rows[1001] == expected(1001, "top")
    # Their container cgroup has no limit of its own; its pod is near its limit.
    assert rows[4242] == expected(4242, "near_limit")
    assert rows[4243] == expected(4243, "near_limit")
    assert rows[4242]["cgroup_path"] == CTR and rows[1000]["cgroup_path"] == PG
    assert set(rows[4242]) == set(PROCESS_MEMORY.column_names)
    assert [r["pid"] for r in sink.rows] == [1000, 1001, 4242, 4243]  # top by RSS, then near-limit by RSS
    assert src.status.events == 4 and "4 of 6 processes" in src.status.detail


def test_a_process_both_top_and_near_limit(proc: Path, hierarchy: Hierarchy) -> None:
    _, sink = sample_once(proc, hierarchy, top_n=3)
    reasons = {r["pid"]: r["reason"] for r in sink.rows}
    assert reasons == {1000: "top", 1001: "top", 4242: "top,near_limit", 4243: "near_limit"}


def test_near_limit_threshold_and_cap(proc: Path, hierarchy: Hierarchy) -> None:
    # The pod is at 93.75 % (v1) or 96.9 % (v2) of its limit.
    _, sink = sample_once(proc, hierarchy, top_n=1, near_limit_ratio=0.99)
    assert [(r["pid"], r["reason"]) for r in sink.rows] == [(1000, "top")]
    # postgres is at 300 MiB of 1 GiB: near at a ratio of 0.25.
    _, sink = sample_once(proc, hierarchy, top_n=0, near_limit_ratio=0.25)
    assert sorted(sink.by_pid()) == [1000, 1001, 4242, 4243]
    src, sink = sample_once(proc, hierarchy, top_n=0, max_near_limit=1)
    assert [(r["pid"], r["reason"]) for r in sink.rows] == [(4242, "near_limit")]  # the largest
    assert "capped: kept the largest 1 of 3 processes in near-limit cgroups" in src.status.detail


def test_without_memory_cgroups_reports_top_only(proc: Path) -> None:
    src, sink = sample_once(proc, None, top_n=3)  # proc/self/mountinfo lists no cgroup
    assert src.hierarchy is None and "top processes only" in src.status.detail
    assert [(r["pid"], r["cgroup_path"], r["reason"]) for r in sink.rows] == [
        (1000, None, "top"), (1001, None, "top"), (4242, None, "top")]


def test_unreadable_proc_fails_open(tmp_path: Path) -> None:
    src = ProcessMemorySource(SourceContext(sink=ListSink(), proc=tmp_path / "absent"))
    with pytest.raises(EdgeError, match="cannot read"):
        src.start()
    assert src.status.state == "failed"


def test_samples_once_per_period(proc: Path, hierarchy: Hierarchy) -> None:
    now = [T0]
    sink = ListSink()
    src = ProcessMemorySource(SourceContext(sink=sink, proc=proc, clock=lambda: now[0]), hierarchy=hierarchy,
                              top_n=1, period=5)
    src.open()
    for t in (0, 1, 4.9, 5, 6):
        now[0] = T0 + t
        src.poll(0)
    assert [r["time"] for r in sink.rows if r["pid"] == 1000] == [
        dt.datetime(2025, 11, 24, 16, 0), dt.datetime(2025, 11, 24, 16, 0, 5)]


def test_status_and_cgroup_parsers() -> None:
    assert parse_status(b"Name:\tkworker/0:1\nPPid:\t2\nKthread:\t1\n") is None
    row = parse_status(b"Name:\tweb server\nPPid:\t7\nVmRSS:\t  8 kB\nRssAnon:\t 4 kB\n")
    assert row == {"comm": "web server", "ppid": 7, "rss_bytes": 8192, "anon_bytes": 4096,
                   "file_bytes": None, "shmem_bytes": None, "swap_bytes": None}
    text = b"5:cpu,cpuacct:/a\n4:memory:/k/p\n0::/k/q\n"
    assert memcg_of(text, 1) == "/k/p" and memcg_of(text, 2) == "/k/q"
    assert memcg_of(b"4:cpu:/a\n", 2) is None


# -- this machine ----------------------------------------------------------------


@pytest.mark.requires_root("creates a memory cgroup beneath the test's own")
def test_real_process_holding_a_known_allocation() -> None:
    h = memory_hierarchy()
    limit, alloc = 128 * MiB, 48 * MiB
    with ScratchCgroup(limit, prefix="pxo-test-procfs", hierarchy=h) as cg, Holder(cg, alloc // MiB) as child:
        sink = ListSink()
        # 48 MiB and the interpreter are over a quarter of 128 MiB: near its limit at 0.25,
        # whatever other engineers' processes on this machine do to the top 20.
        src = ProcessMemorySource(SourceContext(sink=sink), hierarchy=h, near_limit_ratio=0.25)
        src.open()
        src.poll(0)
        mine = [r for r in sink.rows if r["pid"] == child.pid]
        assert len(mine) == 1
        row = mine[0]
        assert "near_limit" in row["reason"].split(",")
        assert row["cgroup_path"] == cg.path
        assert row["ppid"] == os.getpid()
        assert row["comm"] == Path(f"/proc/{child.pid}/comm").read_text().rstrip("\n")
        assert row["anon_bytes"] >= alloc
        assert row["rss_bytes"] == row["anon_bytes"] + row["file_bytes"] + row["shmem_bytes"]
        assert row["oom_score_adj"] == int(Path(f"/proc/{child.pid}/oom_score_adj").read_text())
        assert 0 <= row["oom_score"] <= 2000
