"""container_memory: exact values from v1 and v2 fixture trees, and a real
memory-limited cgroup holding a known allocation on this machine."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pxo.edge.cgroups import Hierarchy, ScratchCgroup, memory_hierarchy
from pxo.edge.errors import EdgeError
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.cgroupfs import CONTAINER_MEMORY, ContainerMemorySource, MemcgReader, read_memcg
from tests.helpers import sink
from tests.helpers.memtrees import CTR, PATHS, PG, POD, V1, V2, MiB, write_v1, write_v2
from tests.helpers.workloads import ChildCgroup, Churn, Holder

T0 = 1_764_000_000.0  # a fixed clock reading
NULL_EVENTS = dict.fromkeys(("events_low", "events_high", "events_max", "events_oom", "events_oom_group_kill"))
NULL_PSI = dict.fromkeys(("psi_some_avg10", "psi_full_avg10", "psi_some_total_us", "psi_full_total_us"))


class ListSink(sink.ListSink):
    def by_path(self) -> dict[str, dict[str, Any]]:
        return {r["cgroup_path"]: r for _, r in self.rows}


def v1_tree(root: Path) -> Hierarchy:
    return Hierarchy(1, write_v1(root / "memory"), frozenset({"rw", "memory"}))


def v2_tree(root: Path) -> Hierarchy:
    return Hierarchy(2, write_v2(root / "unified"), frozenset({"cpu", "io", "memory", "pids"}))


def ino(h: Hierarchy, path: str) -> int:
    return (h.mount / path.lstrip("/")).stat().st_ino


def sample_once(h: Hierarchy, **kwargs: Any) -> tuple[ContainerMemorySource, ListSink]:
    sink = ListSink()
    src = ContainerMemorySource(SourceContext(sink=sink, clock=lambda: T0), hierarchy=h, **kwargs)
    src.open()
    src.poll(0)
    return src, sink


# -- fixture trees ---------------------------------------------------------------


def test_v1_tree_exact_values(tmp_path: Path) -> None:
    h = v1_tree(tmp_path)
    src, sink = sample_once(h)
    assert {t for t, _ in sink.rows} == {"container_memory"}
    rows = sink.by_path()
    assert list(rows) == PATHS  # breadth-first, every cgroup once
    assert rows[POD] == {
        "time": dt.datetime(2025, 11, 24, 16, 0), "cgroup_path": POD, "cgroup_id": ino(h, POD), "hierarchy": "v1",
        "usage_bytes": 251658240, "limit_bytes": 256 * MiB, "peak_bytes": 268435456,
        "anon_bytes": 209715200, "file_bytes": 41943040, "swap_bytes": 4194304,
        "high_bytes": None, "swap_limit_bytes": 0, "shmem_bytes": 0,  # memsw limit == limit: no swap allowed
        "working_set_bytes": 251658240 - 16777216,  # usage - total_inactive_file
        **NULL_EVENTS, "events_oom_kill": 3, "failcnt": 17, "under_oom": True, **NULL_PSI,
        "events_local_max": None, "events_local_oom": None, "events_local_oom_kill": None,
    }
    assert set(rows[POD]) == set(CONTAINER_MEMORY.column_names)
    # The huge "no limit" value is NULL; hierarchical counters come from total_*.
    assert rows[CTR]["limit_bytes"] is None and rows[CTR]["usage_bytes"] == V1[CTR].usage
    assert rows[CTR]["anon_bytes"] == V1[CTR].anon and rows[CTR]["under_oom"] is True
    assert rows["/"]["limit_bytes"] is None and rows["/"]["cgroup_id"] == h.mount.stat().st_ino
    assert rows[PG]["limit_bytes"] == 1 << 30 and rows[PG]["working_set_bytes"] == 314572800 - 125829120
    assert src.status.events == len(PATHS)
    assert "7 cgroups" in src.status.detail


def test_v2_tree_exact_values(tmp_path: Path) -> None:
    h = v2_tree(tmp_path)
    _, sink = sample_once(h)
    rows = sink.by_path()
    assert list(rows) == PATHS
    assert rows[POD] == {
        "time": dt.datetime(2025, 11, 24, 16, 0), "cgroup_path": POD, "cgroup_id": ino(h, POD), "hierarchy": "v2",
        "usage_bytes": 520093696, "limit_bytes": 512 * MiB, "peak_bytes": 536866816,
        "anon_bytes": 482344960, "file_bytes": 33554432, "swap_bytes": 0,
        "high_bytes": None, "swap_limit_bytes": None, "shmem_bytes": 0,  # "max": no limit
        "events_local_max": 0, "events_local_oom": 0, "events_local_oom_kill": 0,  # the container's, not the pod's
        "working_set_bytes": 520093696 - 8388608,  # memory.current - inactive_file
        "events_low": 0, "events_high": 0, "events_max": 1204, "events_oom": 7, "events_oom_kill": 2,
        "events_oom_group_kill": 1, "failcnt": None, "under_oom": None,
        "psi_some_avg10": 1.53, "psi_full_avg10": 0.91, "psi_some_total_us": 4810357, "psi_full_total_us": 2861203,
    }
    assert rows[CTR]["limit_bytes"] is None  # memory.max is "max"
    assert rows[PG]["swap_bytes"] == 1048576 and rows[PG]["limit_bytes"] == 1 << 30
    # The root has memory.stat and memory.pressure but no per-cgroup counters.
    assert rows["/"] == {
        "time": dt.datetime(2025, 11, 24, 16, 0), "cgroup_path": "/", "cgroup_id": h.mount.stat().st_ino,
        "hierarchy": "v2", "usage_bytes": None, "limit_bytes": None, "peak_bytes": None,
        "anon_bytes": V2["/"].anon, "file_bytes": V2["/"].file, "swap_bytes": None, "working_set_bytes": None,
        "high_bytes": None, "swap_limit_bytes": None, "shmem_bytes": 0,
        "events_local_max": None, "events_local_oom": None, "events_local_oom_kill": None, **NULL_EVENTS,
        "events_oom_kill": None, "failcnt": None, "under_oom": None,
        "psi_some_avg10": 0.12, "psi_full_avg10": 0.03, "psi_some_total_us": 91234567,
        "psi_full_total_us": 40123456,
    }


def test_read_memcg_is_one_row_without_time(tmp_path: Path) -> None:
    h = v2_tree(tmp_path)
    _, sink = sample_once(h)
    sampled = sink.by_path()[POD]
    del sampled["time"]
    assert read_memcg(h, POD) == sampled
    assert read_memcg(h, "/kubepods/no-such-pod") is None


def test_missing_files_are_null_v2(tmp_path: Path) -> None:
    """An older kernel: no memory.peak (5.19), no oom_group_kill (5.17), no swap, PSI off."""
    h = v2_tree(tmp_path)
    d = h.mount / POD.lstrip("/")
    for name in ("memory.peak", "memory.swap.current", "memory.pressure"):
        (d / name).unlink()
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 1204\noom 7\noom_kill 2\n")
    row = read_memcg(h, POD)
    assert row is not None
    assert row["peak_bytes"] is None and row["swap_bytes"] is None and row["events_oom_group_kill"] is None
    assert all(row[k] is None for k in NULL_PSI)
    assert row["usage_bytes"] == 520093696 and row["events_oom_kill"] == 2 and row["events_oom"] == 7


def test_missing_files_are_null_v1(tmp_path: Path) -> None:
    h = v1_tree(tmp_path)
    d = h.mount / POD.lstrip("/")
    stat = (d / "memory.stat").read_text()
    no_swap = "".join(line + "\n" for line in stat.splitlines() if not line.startswith(("swap ", "total_swap ")))
    # Swap accounting off: neither total_swap nor memsw files.
    (d / "memory.stat").write_text(no_swap)
    (d / "memory.memsw.usage_in_bytes").unlink()
    (d / "memory.failcnt").unlink()
    row = read_memcg(h, POD)
    assert row is not None and row["swap_bytes"] is None and row["failcnt"] is None
    assert row["usage_bytes"] == 251658240 and row["anon_bytes"] == 209715200
    # total_swap missing but memsw there: swap is memsw usage minus usage.
    (d / "memory.memsw.usage_in_bytes").write_text(f"{251658240 + 8 * MiB}\n")
    assert read_memcg(h, POD)["swap_bytes"] == 8 * MiB  # type: ignore[index]
    # Kernels before 3.19 printed ULLONG_MAX for "no limit".
    (d / "memory.limit_in_bytes").write_text("18446744073709551615\n")
    assert read_memcg(h, POD)["limit_bytes"] is None  # type: ignore[index]


def test_a_file_missing_everywhere_is_asked_for_twice(tmp_path: Path) -> None:
    """memory.peak absent on a 5.15 kernel: once a cgroup missed it twice it costs nothing."""
    h = v2_tree(tmp_path)
    for path in PATHS[1:]:
        (h.mount / path.lstrip("/") / "memory.peak").unlink()
    src, sink = sample_once(h)
    src.sample(T0)
    assert all(r["peak_bytes"] is None for _, r in sink.rows)
    (h.mount / POD.lstrip("/") / "memory.peak").write_text("1\n")
    sink.rows.clear()
    src.sample(T0)
    assert sink.by_path()[POD]["peak_bytes"] is None  # not read again


def test_cgroups_without_the_memory_controller_have_no_row_and_cost_the_others_nothing(tmp_path: Path) -> None:
    """cgroup v2: below a parent whose subtree_control lacks memory there are no memory files
    (a delegated subtree, a runtime that enables only cpu). Two of them in a row once marked
    memory.current absent for every cgroup: the whole table NULL."""
    h = v2_tree(tmp_path)
    for name in ("a.service", "b.service"):  # breadth-first: read one after the other, then POD and CTR
        d = h.mount / "system.slice" / name
        d.mkdir()
        (d / "cgroup.procs").write_text("")
    src, sink = sample_once(h)
    src.sample(T0)
    rows = [r for _, r in sink.rows]
    assert {r["cgroup_path"] for r in rows} == set(PATHS)
    assert all(r["usage_bytes"] is not None and r["anon_bytes"] is not None for r in rows if r["cgroup_path"] != "/")


@pytest.mark.requires_root("creates memory cgroups beneath the test's own")
def test_cgroups_removed_while_read_take_nothing_from_the_others() -> None:
    """A cgroup being removed loses its files one by one before its directory goes: a read then
    fails with ENODEV, or an open with ENOENT. Neither says this kernel lacks the file; taking
    them for that once left a node's anon_bytes NULL for good (a CI run on the 6.1 guest)."""
    h = memory_hierarchy()
    held = 8 * MiB
    reader = MemcgReader(h)
    with ScratchCgroup(256 * MiB, prefix="pxo-test-churn", hierarchy=h) as cg, \
            ChildCgroup(cg, "held") as kept, Holder(kept, held // MiB):
        with Churn(cg) as churn:  # beside the holder's cgroup
            for _ in range(5000):  # each round reads every file of four cgroups coming and going
                for path, d in zip(churn.paths, churn.dirs, strict=True):
                    reader.read(path, directory=str(d))
        row = reader.read(kept.path)
        fresh = read_memcg(h, kept.path)
    assert row is not None and fresh is not None
    assert row["anon_bytes"] >= held and row["usage_bytes"] >= held
    assert {k for k, v in row.items() if v is not None} == {k for k, v in fresh.items() if v is not None}


def test_capped_walk_keeps_the_top_levels_and_says_so(tmp_path: Path) -> None:
    src, sink = sample_once(v1_tree(tmp_path), max_cgroups=3)
    assert list(sink.by_path()) == ["/", "/kubepods", "/system.slice"]
    assert src.status.detail.startswith("capped") and "max_cgroups" in src.status.detail


def test_samples_once_per_period_of_its_clock(tmp_path: Path) -> None:
    now = [T0]
    sink = ListSink()
    src = ContainerMemorySource(SourceContext(sink=sink, clock=lambda: now[0]), hierarchy=v2_tree(tmp_path), period=10)
    src.open()
    src.poll(0)
    assert len(sink.rows) == len(PATHS)
    now[0] = T0 + 9.9
    src.poll(0)
    assert len(sink.rows) == len(PATHS)
    now[0] = T0 + 10
    src.poll(0)
    assert len(sink.rows) == 2 * len(PATHS)
    assert {r["time"] for _, r in sink.rows[len(PATHS):]} == {dt.datetime(2025, 11, 24, 16, 0, 10)}
    now[0] = T0 - 3600  # the clock stepped back an hour: sample now, not in an hour
    src.poll(0)
    assert len(sink.rows) == 3 * len(PATHS)


def test_runs_on_its_own_thread(tmp_path: Path) -> None:
    sink = ListSink()
    src = ContainerMemorySource(SourceContext(sink=sink), hierarchy=v1_tree(tmp_path), period=3600)
    src.start()
    try:
        deadline = time.monotonic() + 30
        while len(sink.rows) < len(PATHS) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert src.status.state == "running"
    finally:
        src.stop()
    assert len(sink.rows) == len(PATHS) and src.status.state == "stopped"


def wait_for(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def test_a_failing_sample_reopens_the_source_after_a_pause_that_grows(tmp_path: Path) -> None:
    """A sample that raises what no reader expects (here EISDIR: memory.stat is a directory) marks
    the source failed; it is opened again after a pause, longer at each failure in a row, and
    samples again once the cause is gone. Stopped during a pause, it ends at once."""
    h = v2_tree(tmp_path)
    stat = h.mount / POD.lstrip("/") / "memory.stat"
    text = stat.read_text()
    stat.unlink()
    stat.mkdir()
    sink = ListSink()
    src = ContainerMemorySource(SourceContext(sink=sink), hierarchy=h, period=0.05)
    src.RESTART_DELAYS = (0.05, 0.1)
    src.start()
    try:
        wait_for(lambda: "IsADirectoryError" in src.status.detail and "again in 0.05 s" in src.status.detail,
                 "the first failure, with the first pause")
        wait_for(lambda: "again in 0.1 s" in src.status.detail, "a failure in a row, with a longer pause")
        assert src.status.state == "failed" and src.restarts >= 1
        stat.rmdir()
        stat.write_text(text)
        wait_for(lambda: src.status.state == "running" and sink.by_path().get(POD, {}).get("anon_bytes") is not None,
                 "running again, with the cgroup's anon_bytes")
    finally:
        src.stop()
    assert src._thread is not None and not src._thread.is_alive()

    stat.unlink()
    stat.mkdir()
    src = ContainerMemorySource(SourceContext(sink=ListSink()), hierarchy=h, period=0.05)
    src.RESTART_DELAYS = (3600.0,)
    src.start()
    wait_for(lambda: src.status.state == "failed", "failed, an hour's pause ahead")
    src.stop()
    assert src._thread is not None and not src._thread.is_alive(), "stop() waits for no pause"


def test_no_memory_hierarchy_fails_open_clearly(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
                    "31 23 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    src = ContainerMemorySource(SourceContext(sink=ListSink(), mountinfo=info))
    with pytest.raises(EdgeError, match="no cgroup hierarchy with the memory controller"):
        src.start()
    assert src.status.state == "failed"
    with pytest.raises(EdgeError, match="cannot read"):
        ContainerMemorySource(SourceContext(sink=ListSink(), mountinfo=tmp_path / "absent")).open()
    with pytest.raises(EdgeError, match="cannot read the memory cgroup hierarchy"):
        gone = Hierarchy(2, tmp_path / "gone", frozenset())
        ContainerMemorySource(SourceContext(sink=ListSink()), hierarchy=gone).open()


def test_a_cgroup_removed_under_the_reader_is_skipped(tmp_path: Path) -> None:
    h = v1_tree(tmp_path)
    src, sink = sample_once(h)
    shutil.rmtree(h.mount / CTR.lstrip("/"))
    sink.rows.clear()
    src.sample(T0)
    assert CTR not in sink.by_path() and POD in sink.by_path()
    assert read_memcg(h, CTR) is None


# -- this machine ----------------------------------------------------------------


@pytest.mark.requires_root("creates a memory cgroup beneath the test's own")
def test_real_cgroup_holding_a_known_allocation() -> None:
    h = memory_hierarchy()
    limit, alloc = 128 * MiB, 48 * MiB
    with ScratchCgroup(limit, prefix="pxo-test-cgroupfs", hierarchy=h) as cg:
        with Holder(cg, alloc // MiB):
            direct = read_memcg(h, cg.path)
            _, sink = sample_once(h)
        mine = [r for _, r in sink.rows if r["cgroup_path"] == cg.path]  # others' cgroups come and go
        assert len(mine) == 1
        for row in (direct, mine[0]):
            assert row is not None
            assert row["hierarchy"] == f"v{h.version}"
            assert row["cgroup_id"] == cg.dir.stat().st_ino
            assert row["limit_bytes"] == limit
            assert row["usage_bytes"] >= alloc
            assert row["anon_bytes"] >= alloc
            assert alloc <= row["working_set_bytes"] <= row["usage_bytes"]
            assert (h.version == 2 and row["peak_bytes"] is None) or row["peak_bytes"] >= row["usage_bytes"]
            assert row["events_oom_kill"] == 0
    assert read_memcg(h, cg.path) is None  # removed with the cgroup


def test_a_file_missing_once_while_a_cgroup_is_populated_is_not_absent_for_good(tmp_path: Path) -> None:
    """A cgroup whose memory controller is being switched on gets its files a group at a
    time (memory.swap.* after memory.max): one read in that instant must not mark the file
    absent for every cgroup (it once left swap_limit_bytes NULL for good on a 6.1 guest)."""
    h = v2_tree(tmp_path)
    swap_max = h.mount / CTR.lstrip("/") / "memory.swap.max"
    swap_max.write_text("0\n")
    reader = MemcgReader(h)
    swap_max.rename(swap_max.with_name("hidden"))  # the instant: memory.max there, memory.swap.max not yet
    assert reader.read(CTR)["swap_limit_bytes"] is None  # type: ignore[index]
    swap_max.with_name("hidden").rename(swap_max)
    assert reader.read(CTR)["swap_limit_bytes"] == 0  # type: ignore[index]
    # a file this kernel does not have is missing at every read: absent after the second
    swap_max.unlink()
    assert reader.read(CTR)["swap_limit_bytes"] is None  # type: ignore[index]
    assert reader.read(CTR)["swap_limit_bytes"] is None  # type: ignore[index]
    swap_max.write_text("0\n")
    assert reader.read(CTR)["swap_limit_bytes"] is None, "remembered as absent: not read again"  # type: ignore[index]
