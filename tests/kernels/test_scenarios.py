"""What every kernel pxo supports must do, against real workloads checked with the
kernel's own counters: one OOM kill, a memory.oom.group kill of three, a burst
whose reports the kernel rate-limits, a kill caused by a sibling under a parent's
limit, a user SIGKILL, exit statuses, a known allocation, memcg reclaim, and
kills recovered after a restart.

tests/kernels/test_matrix.py boots Debian's kernels (5.10, 6.1, 6.12, 7.x) as
fresh nodes (cgroup v2 only, tracefs not mounted) and runs this module inside
each; here it runs on this machine as it is (6.18, cgroup v1 memory). With
PXO_MATRIX_REPORT set, what each source did and which columns were filled is
written there as JSON for docs/kernels.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pxo.edge import explain
from pxo.edge.cgroups import Hierarchy, ScratchCgroup, memory_hierarchy
from pxo.edge.errors import EdgeError
from pxo.edge.oomdrill import DRILL_COMM, run_drill, start_allocator
from pxo.edge.sources import all_tables
from pxo.edge.sources.alloc import AllocRateBpfSource
from pxo.edge.sources.alloc_faults import AllocFaultsSource
from pxo.edge.sources.base import Source, SourceContext
from pxo.edge.sources.cgroupfs import ContainerMemorySource
from pxo.edge.sources.exit import ProcessExitBpfSource
from pxo.edge.sources.oom import OomSource
from pxo.edge.sources.reclaim import ReclaimBpfSource
from pxo.edge.sources.signal import KillBpfSource
from pxo.edge.store import Store
from tests.helpers.sink import ListSink
from tests.helpers.workloads import ChildCgroup, Holder, TailAllocator, memory_events

pytestmark = pytest.mark.requires_bpf

MIB = 1 << 20
# Under an emulated CPU (the matrix's guests) touching memory costs ~30 MB/s: smaller workloads there.
IN_GUEST = os.environ.get("PXO_GUEST") == "1"
LIMIT_MIB = 16 if IN_GUEST else 32
BURST = (6, 4) if IN_GUEST else (12, 4)  # cgroups x allocators, all at once
KNOWN_ALLOC_MIB = 128 if IN_GUEST else 256

EBPF = ("oom", "kill_bpf", "exit_bpf", "alloc_faults", "alloc_bpf", "reclaim_bpf")
REPORT: dict[str, Any] = {"release": os.uname().release, "scenarios": {}}


@dataclass
class Node:
    """Every source of an edge, in this process, writing into one sink; and an OOM source
    without the kernel log, whose why comes from eBPF alone."""

    sink: ListSink
    inferred: ListSink
    faults: ListSink  # alloc_faults fills alloc_rate too: its rows apart from alloc_bpf's
    sources: dict[str, Source]
    hierarchy: Hierarchy
    failed: dict[str, str] = field(default_factory=dict)

    def require(self, *names: str) -> None:
        for n in names:
            src = self.sources[n]
            if n in self.failed or src.status.state not in ("running", "degraded"):
                pytest.fail(f"source {n} is {src.status.state}: {self.failed.get(n) or src.status.detail}")

    def rows(self, table: str, **equal: Any) -> list[dict[str, Any]]:
        return self.sink.where(table, **equal)

    def wait_rows(self, table: str, n: int, timeout: float = 15.0, **equal: Any) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while len(self.rows(table, **equal)) < n and time.monotonic() < end:
            time.sleep(0.05)
        return self.rows(table, **equal)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    sink, inferred, faults = ListSink(), ListSink(), ListSink()
    ctx = SourceContext(sink=sink)
    sources: dict[str, Source] = {
        "oom": OomSource(ctx), "kill_bpf": KillBpfSource(ctx), "exit_bpf": ProcessExitBpfSource(ctx),
        "alloc_bpf": AllocRateBpfSource(ctx, interval=0.25), "reclaim_bpf": ReclaimBpfSource(ctx),
        "alloc_faults": AllocFaultsSource(SourceContext(sink=faults), interval=0.25),
        "cgroupfs": ContainerMemorySource(ctx, period=0.5),
        "oom_ebpf_only": OomSource(SourceContext(sink=inferred, kmsg=Path("/nonexistent/kmsg"))),
    }
    n = Node(sink, inferred, faults, sources, memory_hierarchy())
    for name, src in sources.items():
        try:
            src.start()
        except EdgeError as exc:  # each scenario names the source it needs and why it is down
            n.failed[name] = str(exc)
    REPORT["sources"] = {name: {"state": s.status.state, "detail": n.failed.get(name) or s.status.detail}
                         for name, s in sources.items() if name != "oom_ebpf_only"}
    REPORT["hierarchy"] = f"v{n.hierarchy.version}"
    try:
        yield n
    finally:
        for src in sources.values():
            src.stop()
        _write_report(sink)


def _write_report(sink: ListSink) -> None:
    where = os.environ.get("PXO_MATRIX_REPORT")
    if not where:
        return
    filled: dict[str, list[str]] = {}
    for t in all_tables():
        rows = [r for table, r in sink.rows if table == t.name]
        filled[t.name] = [c.name for c in t.columns if any(r.get(c.name) is not None for r in rows)] if rows else []
    REPORT["filled"] = filled
    REPORT["rows"] = {t.name: sum(1 for table, _ in sink.rows if table == t.name) for t in all_tables()}
    Path(where).write_text(json.dumps(REPORT, indent=1, default=str))


def _same_figures(rows: list[dict[str, Any]]) -> bool:
    keys = ("oom_id", "constraint", "oom_memcg_path", "memcg_usage_bytes", "memcg_limit_bytes",
            "memcg_peak_bytes", "memcg_oom_kills", "oom_group_path", "report_logged")
    return len({tuple(r.get(k) for k in keys) for r in rows}) == 1


# -- OOM kills ------------------------------------------------------------------------


def test_one_kill_is_one_row_with_its_cgroup_and_why(node: Node) -> None:
    node.require("oom", "exit_bpf", "kill_bpf")
    drill = run_drill(limit_mib=LIMIT_MIB, allocate_mib=4 * LIMIT_MIB)
    assert drill.killed and drill.oom_kills == 1  # the kernel's own count
    [row] = node.wait_rows("oom_events", 1, tid=drill.pid)
    time.sleep(1.5)  # past the join window: a second row would be here by now
    assert len(node.rows("oom_events", tid=drill.pid)) == 1
    assert row["pid"] == drill.pid and row["comm"] == DRILL_COMM and row["origin"] == "bpf+kmsg"
    assert row["cgroup_path"] == drill.cgroup_path  # the victim's own, walked in the kernel
    if node.hierarchy.version == 2:
        assert row["cgroup_v2_path"] == drill.cgroup_path
    assert row["constraint"] == "memcg" and row["oom_memcg_path"] == drill.cgroup_path and row["chosen"]
    assert row["memcg_limit_bytes"] == LIMIT_MIB * MIB and row["pool_bytes"] == LIMIT_MIB * MIB
    assert row["anon_rss_bytes"] > LIMIT_MIB * MIB // 2 and row["total_vm_bytes"] >= row["anon_rss_bytes"]
    [exit_row] = node.wait_rows("process_exits", 1, pid=drill.pid)
    assert exit_row["signal"] == signal.SIGKILL and exit_row["cgroup_path"] == drill.cgroup_path
    assert node.rows("kill_events", target_pid=drill.pid) == []  # the kernel's kill is not a user's
    REPORT["scenarios"]["single kill"] = {"rows": 1, "kernel oom_kill": drill.oom_kills, "origin": row["origin"]}


def test_a_group_kill_of_three_is_three_rows_one_chosen(node: Node, tmp_path: Path) -> None:
    node.require("oom")
    if node.hierarchy.version != 2:
        pytest.skip("memory.oom.group is cgroup v2's: the matrix's guests run this")
    # Three processes, no more (a shell pipeline would add its shell to the group): two
    # interpreters holding a little, and one that grows until the kernel kills the group.
    with ScratchCgroup(64 * MIB, prefix="pxo-group") as cg:
        (cg.dir / "memory.oom.group").write_text("1")
        with Holder(cg, 4, python=sys.executable) as a, Holder(cg, 4, python=sys.executable) as b:
            grower = start_allocator(cg, 256)
            assert grower.wait(timeout=120) == -signal.SIGKILL
            assert a.proc.wait(timeout=30) == -signal.SIGKILL and b.proc.wait(timeout=30) == -signal.SIGKILL
        events = memory_events(cg)
        rows = node.wait_rows("oom_events", 3, cgroup_path=cg.path)
        time.sleep(1.5)
        rows = node.rows("oom_events", cgroup_path=cg.path)
    # The kernel kills the chosen victim twice and counts it twice (oom_kill 4 for a group of 3).
    assert len(rows) == 3, rows
    assert events["oom_kill"] in (3, 4) and events.get("oom_group_kill", 1) == 1, events
    assert {a.pid, b.pid} < {r["pid"] for r in rows}
    [chosen] = [r for r in rows if r["chosen"]]
    assert chosen["pid"] == grower.pid and chosen["comm"] == DRILL_COMM
    assert all(r["oom_group_path"] == cg.path and r["origin"] == "bpf+kmsg" for r in rows), rows
    assert _same_figures(rows) and rows[0]["constraint"] == "memcg" and rows[0]["oom_memcg_path"] == cg.path
    inferred = {r["pid"]: (r["chosen"], r["oom_group_path"]) for r in node.inferred.where("oom_events")}
    assert all(inferred[r["pid"]] == (r["chosen"], cg.path) for r in rows), inferred
    REPORT["scenarios"]["group kill of 3"] = {"rows": len(rows), "kernel oom_kill": events["oom_kill"],
                                             "kernel oom_group_kill": events.get("oom_group_kill")}
    why = explained(node, str(grower.pid), tmp_path)
    assert why.verdicts[0].rule == "group_kill" and "all 3 of its tasks" in why.verdicts[0].sentence, why.verdicts
    assert {m["pid"] for m in why.members} == {a.pid, b.pid}


@pytest.mark.skipif(not IN_GUEST, reason="a node-wide OOM is caused only inside the matrix's guests (a VM of "
                    "its own), never on the machine that runs the suite")
def test_a_node_oom_is_explained_with_the_nodes_top_consumers(node: Node, tmp_path: Path) -> None:
    """The whole guest runs out of memory: a process outside any limit (its cgroup's is far above the
    guest's RAM) maps memory until the kernel's global OOM killer takes it."""
    node.require("oom")
    grab = ("import mmap, time\nopen('/proc/self/oom_score_adj', 'w').write('1000')\nheld = []\n"
            "for _ in range(64):\n    held.append(mmap.mmap(-1, 128 << 20, flags=mmap.MAP_PRIVATE | "
            "mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE))\ntime.sleep(60)\n")
    with ScratchCgroup(64 << 30, prefix="pxo-node") as cg:
        hog = subprocess.Popen(["sh", "-c", f'echo $$ > {cg.dir}/cgroup.procs && exec "$0" -c "$1"', sys.executable,
                                grab])
        assert hog.wait(timeout=300) == -signal.SIGKILL
        [row] = node.wait_rows("oom_events", 1, timeout=30, pid=hog.pid)
    assert row["constraint"] == "global", row
    why = explained(node, str(hog.pid), tmp_path)
    assert why.verdicts[0].rule == "node_oom", why.verdicts
    assert "The node ran out of memory" in why.verdicts[0].sentence and "pid" in why.verdicts[0].sentence
    assert why.holders and why.holders[0]["pid"] == hog.pid  # the largest candidate was the hog
    REPORT["scenarios"]["node OOM"] = {"constraint": row["constraint"], "verdict": why.verdicts[0].rule}


def explained(node: Node, target: str, tmp_path: Path) -> explain.Explanation:
    """`pxo explain TARGET` over what the node's sources recorded, in a store of its own."""
    store = Store(tmp_path / "explain.duckdb", all_tables())
    store.start()
    try:
        for table, row in list(node.sink.rows):
            store.append(table, row)
        found = explain.find(store, target)
        assert found is not None, f"no kill matches {target}"
        return explain.explain(store, found)
    finally:
        store.close()


def test_a_burst_says_why_for_every_kill_even_unreported(node: Node) -> None:
    node.require("oom", "oom_ebpf_only")
    ncg, per = BURST
    cgs = [ScratchCgroup(LIMIT_MIB * MIB, prefix="pxo-burst") for _ in range(ncg)]
    try:
        for cg in cgs:
            cg.__enter__()
        allocators = [TailAllocator(cg, 4 * LIMIT_MIB) for cg in cgs for _ in range(per)]
        assert all(a.wait() in (128 + signal.SIGKILL, -signal.SIGKILL) for a in allocators)  # none got its fill
        kills = {cg.path: cg.oom_kills() for cg in cgs}
        expected = sum(kills.values())
        end = time.monotonic() + 20
        while sum(len(node.rows("oom_events", cgroup_path=p)) for p in kills) < expected \
                and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        for cg in cgs:
            cg.remove()
    # Every allocator died of an OOM kill; once the tails are dying the kernel may pick a head too.
    assert expected >= ncg * per
    for path, n in kills.items():
        rows = node.rows("oom_events", cgroup_path=path)
        assert len(rows) == n, (path, rows)  # each kill exactly once
        assert all(r["constraint"] == "memcg" and r["oom_memcg_path"] == path for r in rows), rows
        assert all(r["origin"] == "bpf+kmsg" and r["comm"] in ("tail", "head", "sh") for r in rows), rows
    ours = [r for p in kills for r in node.rows("oom_events", cgroup_path=p)]
    inferred = {r["tid"]: (r["constraint"], r["oom_memcg_path"]) for r in node.inferred.where("oom_events")}
    assert all(inferred[r["tid"]] == (r["constraint"], r["oom_memcg_path"]) for r in ours)
    unreported = sum(1 for r in ours if not r["report_logged"])
    REPORT["scenarios"]["burst"] = {"kills": expected, "rows": len(ours), "report rate-limited": unreported,
                                    "why filled": sum(1 for r in ours if r["constraint"] and r["oom_memcg_path"])}


def test_a_sibling_under_a_parents_limit_names_the_parent(node: Node) -> None:
    """Neither child has a limit of its own: the parent's is hit, by the greedy child, with a
    neighbour holding memory beside it. Whoever the kernel kills, the cgroup that ran out is the parent."""
    node.require("oom", "oom_ebpf_only")
    with ScratchCgroup(2 * LIMIT_MIB * MIB, prefix="pxo-parent") as parent, \
            ChildCgroup(parent, "quiet") as quiet, ChildCgroup(parent, "greedy") as greedy, \
            Holder(quiet, LIMIT_MIB // 4, python=sys.executable):
        grower = TailAllocator(greedy, 8 * LIMIT_MIB)
        assert grower.wait() == 128 + signal.SIGKILL
        rows = node.wait_rows("oom_events", 1, cgroup_path=greedy.path)
        time.sleep(1.5)
        rows = [r for p in (quiet.path, greedy.path) for r in node.rows("oom_events", cgroup_path=p)]
        kernel_kills = quiet.oom_kills() + greedy.oom_kills()
    assert rows and len(rows) == kernel_kills, rows
    assert all(r["constraint"] == "memcg" and r["oom_memcg_path"] == parent.path for r in rows), rows
    for r in rows:
        [inferred] = node.inferred.where("oom_events", tid=r["tid"])
        assert (inferred["constraint"], inferred["oom_memcg_path"]) == ("memcg", parent.path)
    REPORT["scenarios"]["parent limit"] = {"kills": len(rows), "oom_memcg is the parent": True}


def test_kills_while_the_source_is_down_are_recovered_exactly_once(node: Node, tmp_path: Path) -> None:
    node.require("oom")
    store = Store(tmp_path / "edge.duckdb", all_tables())
    store.start()
    ctx = SourceContext(sink=store, oom_recorded=store.oom_kill_recorded)

    def ours(*pids: int) -> list[tuple[int, str]]:
        store.flush()
        sql = f"SELECT pid, origin FROM oom_events WHERE pid IN ({', '.join(map(str, pids))}) ORDER BY pid"
        return [(r["pid"], r["origin"]) for b in store.execute(sql) for r in b.to_pylist()]

    try:
        src = OomSource(ctx)
        src.start()
        live = run_drill(limit_mib=LIMIT_MIB, allocate_mib=4 * LIMIT_MIB)
        end = time.monotonic() + 10
        while not ours(live.pid) and time.monotonic() < end:
            time.sleep(0.1)
        src.stop()
        missed = run_drill(limit_mib=LIMIT_MIB, allocate_mib=4 * LIMIT_MIB)  # nobody is watching
        for _ in range(2):  # a second restart must not duplicate anything
            src = OomSource(ctx)
            src.start()
            src.stop()
            assert ours(live.pid, missed.pid) == sorted([(live.pid, "bpf+kmsg"), (missed.pid, "kmsg-backlog")])
    finally:
        store.close()
    REPORT["scenarios"]["restart recovery"] = {"recovered once": True}


# -- kills from user space, exits --------------------------------------------------------


def test_a_user_sigkill_is_a_kill_event_not_an_oom(node: Node) -> None:
    node.require("kill_bpf", "exit_bpf", "oom")
    victim = subprocess.Popen(["sleep", "60"])
    victim.send_signal(signal.SIGKILL)  # what kubelet, oomd or earlyoom would do
    victim.wait()
    [kill] = node.wait_rows("kill_events", 1, target_pid=victim.pid)
    [exit_row] = node.wait_rows("process_exits", 1, pid=victim.pid)
    time.sleep(1.5)
    assert kill["sender_pid"] == os.getpid() and kill["signal"] == 9 and kill["whole_process"]
    assert exit_row["signal"] == signal.SIGKILL
    assert node.rows("oom_events", pid=victim.pid) == []
    REPORT["scenarios"]["user SIGKILL"] = {"kill_events": 1, "oom_events": 0}


_THREADS = r"""
import os, sys, threading, time
ts = [threading.Thread(target=time.sleep, args=(30,), daemon=True) for _ in range(4)]
for t in ts: t.start()
sys.exit(5)
"""


def test_exit_statuses_one_row_per_process(node: Node) -> None:
    node.require("exit_bpf")
    plain = subprocess.Popen(["sh", "-c", "exit 3"])
    termed = subprocess.Popen(["sleep", "60"])
    threaded = subprocess.Popen([sys.executable, "-c", _THREADS])
    termed.send_signal(signal.SIGTERM)
    codes = {p.pid: p.wait(timeout=60) for p in (plain, termed, threaded)}
    marker = subprocess.Popen(["true"])
    marker.wait()
    node.wait_rows("process_exits", 1, pid=marker.pid)  # everything before it has been read
    for pid, code in codes.items():
        rows = node.rows("process_exits", pid=pid)
        assert len(rows) == 1, rows  # one per process, not per thread
        r = rows[0]
        assert (r["exit_status"], r["signal"]) == ((code, 0) if code >= 0 else (0, -code)), (code, r)
        assert r["ppid"] == os.getpid()
    REPORT["scenarios"]["exit statuses"] = {"rows": len(codes)}


# -- allocation, reclaim, cgroup state ------------------------------------------------------

_ALLOC = r"""
import mmap, os, sys
size = int(sys.argv[1])
if size:
    m = mmap.mmap(-1, size)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    for off in range(0, size, mmap.PAGESIZE):
        m[off] = 1
"""


def test_a_known_allocation_is_counted(node: Node) -> None:
    """The same known allocation, counted by both alloc_rate sources: the exact per-page probe
    (alloc_bpf, opt-in) and the default one from the kernel's own fault counts (alloc_faults, the
    last ones of an exited process kept by sched_process_exit), each into its own sink."""
    node.require("alloc_bpf", "alloc_faults")
    src = node.sources["alloc_bpf"]
    assert isinstance(src, AllocRateBpfSource)
    with ScratchCgroup(1 << 30, prefix="pxo-alloc") as cg:
        pids = []
        for size in (0, 0, KNOWN_ALLOC_MIB * MIB):  # the interpreter alone, warm, then with the allocation
            child = subprocess.Popen(["sh", "-c", f'echo $$ > {cg.procs_file} && exec "$0" -c "$1" {size}',
                                      sys.executable, _ALLOC])
            assert child.wait(timeout=120) == 0
            pids.append(child.pid)
        target = src.drains + 2
        end = time.monotonic() + 10
        while (src.drains < target or not node.faults.where("alloc_rate", pid=pids[2])) and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.6)  # a few more alloc_faults intervals: the last faults come with the interval of the exit
    size = KNOWN_ALLOC_MIB * MIB
    for name, sink in (("known allocation", node.sink), ("known allocation (faults)", node.faults)):
        baseline = sum(r["alloc_bytes"] for r in sink.where("alloc_rate", pid=pids[1]))
        measured = sum(r["alloc_bytes"] for r in sink.where("alloc_rate", pid=pids[2]))
        in_cgroup = sum(r["alloc_bytes"] for r in sink.where("alloc_rate", pid=pids[2], cgroup_path=cg.path))
        assert abs(measured - baseline - size) <= 0.05 * size, (name, measured, baseline)
        assert in_cgroup >= size, (name, [(r["cgroup_path"], r["alloc_bytes"])
                                          for r in sink.where("alloc_rate", pid=pids[2])])
        REPORT["scenarios"][name] = {"MiB": KNOWN_ALLOC_MIB,
                                     "error %": round(100 * (measured - baseline - size) / size, 2)}


def _uncached_file(size: int) -> tuple[Path, Any]:
    """A file of at least ``size`` bytes whose pages are not in the page cache, on a filesystem
    whose pages are reclaimable: written to /var/tmp on a disk; in a guest (where /var/tmp is
    tmpfs, whose pages only swap frees) one of the host's big files, never read since boot."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", "/var/tmp"], capture_output=True, text=True).stdout.strip()
    if fs not in ("tmpfs", "overlayfs"):
        f = tempfile.NamedTemporaryFile(dir="/var/tmp", prefix="pxo-reclaim-")  # noqa: SIM115
        chunk = os.urandom(MIB)
        for _ in range(size // MIB):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return Path(f.name), f
    for candidate in ("/usr/lib/chromium/chromium", "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1",
                      "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.15", "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"):
        p = Path(candidate)
        if p.is_file() and p.stat().st_size >= size:
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            return p, None
    pytest.fail(f"no file of {size >> 20} MiB to read through the page cache")


def test_memcg_reclaim_is_timed_for_its_cgroup(node: Node) -> None:
    node.require("reclaim_bpf")
    limit = LIMIT_MIB * MIB
    path, keep = _uncached_file(4 * limit)
    try:
        with ScratchCgroup(limit, prefix="pxo-reclaim") as cg:
            reader = subprocess.Popen(["sh", "-c", f'echo $$ > {cg.procs_file} && exec dd if="$0" of=/dev/null '
                                                   f'bs=1M count={4 * LIMIT_MIB} status=none', str(path)])
            assert reader.wait(timeout=120) == 0
            time.sleep(0.5)
    finally:
        if keep is not None:
            keep.close()
    rows = [r for r in node.rows("reclaim_stalls", cgroup_path=cg.path) if r["kind"] == "memcg"]
    assert rows and all(r["pid"] == reader.pid and r["duration_ns"] > 0 for r in rows), rows
    assert sum(r["reclaimed_bytes"] for r in rows) >= limit  # it read 4x its limit through the page cache
    REPORT["scenarios"]["memcg reclaim"] = {"episodes": len(rows)}


def test_container_memory_reads_the_cgroup(node: Node) -> None:
    node.require("cgroupfs")
    limit, held = 64 * MIB, 8 * MIB
    # laid out as a kubelet does (pod, then container): on cgroup v2 each level hands the controller on
    with ScratchCgroup(limit, prefix="pxo-state", nested="pod1/ctr1") as cg, \
            Holder(cg, held >> 20, python=sys.executable):
        end = time.monotonic() + 20  # sampled every 0.5 s: until a sample shows what the holder holds
        while time.monotonic() < end and not [r for r in node.rows("container_memory", cgroup_path=cg.path)
                                              if (r["anon_bytes"] or 0) >= held]:
            time.sleep(0.1)
        rows = [r for r in node.rows("container_memory", cgroup_path=cg.path) if (r["anon_bytes"] or 0) >= held]
    seen = [(r["usage_bytes"], r["anon_bytes"]) for r in node.rows("container_memory", cgroup_path=cg.path)]
    assert rows, f"no sample of {cg.path} shows the holder's {held} bytes: (usage, anon) {seen}, " \
                 f"{node.sources['cgroupfs'].status}"
    r = rows[-1]
    assert r["limit_bytes"] == limit and held <= r["usage_bytes"] <= limit
    assert r["hierarchy"] == f"v{node.hierarchy.version}"
    if node.hierarchy.version == 2:
        assert r["events_oom_kill"] == 0 and r["events_local_oom_kill"] == 0 and r["swap_limit_bytes"] is not None
    REPORT["scenarios"]["container_memory"] = {"columns filled": sorted(k for k, v in r.items() if v is not None)}


def test_sources_stay_up(node: Node) -> None:
    """Last: nothing failed while the scenarios ran."""
    for name, src in node.sources.items():
        if name not in node.failed:
            assert src.status.state in ("running", "degraded"), (name, src.status)
            assert src.restarts == 0, (name, "failed and was opened again: see the log")
    assert not [n for n in EBPF if n in node.failed], node.failed
