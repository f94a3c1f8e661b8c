"""eBPF that outlives the edge (edge/pins.py, edge/loader.py): programs, maps and ring buffers
pinned in bpffs keep capturing while the edge is SIGKILLed and restarting; a starting edge
adopts them and drains what they captured, joined with the kernel log's backlog. Real
programs, real OOM kills in cgroups beneath this test's own, real edges."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pxo.cli.local import LocalDeployment
from pxo.edge import pins
from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.oomdrill import start_allocator
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.signal import KillBpfSource
from tests.helpers.oom import edge_rows, wait_rows
from tests.helpers.services import Service, start_edge
from tests.helpers.sink import ListSink

pytestmark = pytest.mark.requires_bpf


def _kill(cg: ScratchCgroup) -> int:
    p = start_allocator(cg, 128)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    return p.pid


def test_kills_while_the_edge_is_down_or_restarting_come_back_once_from_ebpf_and_the_log(
        tmp_path: Path, services: list[Service], pin_root: Path) -> None:
    data = tmp_path / "edge"
    args = ["--listen", "127.0.0.1:0", "--data-dir", str(data), "--node", "node-pin", "--sources", '["oom"]',
            "--bpf-pins", str(pin_root)]
    edge, addr = start_edge(services, data, "", "node-pin", "--sources", '["oom"]', "--bpf-pins", str(pin_root))
    assert (pin_root / "oom" / "link_mark_victim").exists()
    expected: list[int] = []
    with ScratchCgroup(32 << 20, prefix="pxo-pin") as cg:
        for _round in range(2):
            edge.stop(signal.SIGKILL)  # a crash: nothing is flushed or closed
            services.remove(edge)
            # 12 kills in a few seconds: more than the kernel's 10 reports per 5 s, so some
            # kills have only their "Killed process" line: eBPF's account says why.
            down = [_kill(cg) for _ in range(12)]
            edge = Service("edge", args, data)  # starting: kills now land before or after adoption
            services.append(edge)
            starting = [_kill(cg) for _ in range(2)]
            addr = edge.wait_addr()
            expected += down + starting
            # Round 0 is killed again at once: the kills it read but had not written yet come back
            # to the next edge (the ring buffer's replay), and the ones it wrote do not.
        sql = f"SELECT pid, cgroup_path, \"constraint\", origin FROM oom_events WHERE pid IN " \
              f"({', '.join(map(str, expected))})"
        for _check in range(2):  # and once more after a crash with nothing new: no duplicates
            wait_rows(addr, sql, len(expected), timeout=30)
            time.sleep(1.5)  # past the join window: a duplicate would be here now
            rows = edge_rows(addr, sql)
            assert sorted(r["pid"] for r in rows) == sorted(expected), rows  # each exactly once
            for r in rows:
                assert (r["cgroup_path"], r["constraint"], r["origin"]) == (cg.path, "memcg", "bpf+kmsg"), r
            edge.stop(signal.SIGKILL)
            services.remove(edge)
            edge, addr = start_edge(services, data, "", "node-pin", "--sources", '["oom"]', "--bpf-pins",
                                    str(pin_root))
    assert "adopted the programs pinned" in edge.log()


def _kill_event_seen(sink: ListSink) -> int:
    victim = subprocess.Popen(["sleep", "30"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    sink.wait("kill_events", target_pid=victim.pid)
    return victim.pid


def test_a_pin_that_matches_is_adopted_and_one_that_does_not_is_replaced(pin_root: Path) -> None:
    sink = ListSink()
    ctx = SourceContext(sink=sink, pin_root=pin_root)
    src = KillBpfSource(ctx)
    src.start()
    assert src.input.bpf is not None and not src.input.bpf.adopted
    _kill_event_seen(sink)
    src.stop()
    link = pin_root / "signal" / "link_signal_generate"
    first = os.stat(link).st_ino

    # Stopped: the program still runs, and the next source adopts it with what it caught meanwhile.
    victim = subprocess.Popen(["sleep", "30"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    src = KillBpfSource(ctx)
    src.start()
    assert src.input.bpf is not None and src.input.bpf.adopted
    sink.wait("kill_events", target_pid=victim.pid)
    src.stop()
    assert os.stat(link).st_ino == first

    # Another manifest (another pxo, other sources or flags): unpinned and loaded anew.
    manifest = pins.read_blob(pin_root / "signal" / pins.MANIFEST)
    assert manifest is not None and manifest["program"] == "signal"
    (pin_root / "signal" / pins.MANIFEST).unlink()
    pins.write_blob(pin_root / "signal" / pins.MANIFEST, {**manifest, "key": "another version"})
    src = KillBpfSource(ctx)
    src.start()
    try:
        assert src.input.bpf is not None and not src.input.bpf.adopted
        assert os.stat(link).st_ino != first
        assert pins.read_blob(pin_root / "signal" / pins.MANIFEST) == manifest
        _kill_event_seen(sink)
    finally:
        src.stop()
    assert sorted(p.name for p in pin_root.iterdir()) == ["kernel", "lock_signal", "signal"]  # no leftovers


def test_an_upgrade_that_leaves_the_programs_as_they_were_adopts_them(pin_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Another pxo version loaded the program (its helper wrote its version in the manifest);
    the sources and flags are the same. The new edge adopts it instead of replacing it, and reads
    what it caught while no edge ran: what a rolling upgrade of the DaemonSet looks like."""
    sink = ListSink()
    ctx = SourceContext(sink=sink, pin_root=pin_root)
    monkeypatch.setattr(pins, "pxo_version", lambda: "0.0.1")
    older = KillBpfSource(ctx)
    older.start()
    assert older.input.bpf is not None and not older.input.bpf.adopted
    _kill_event_seen(sink)
    older.stop()
    monkeypatch.undo()
    manifest = pins.read_blob(pin_root / "signal" / pins.MANIFEST)
    assert manifest is not None and manifest["pxo"] == "0.0.1" != pins.pxo_version()
    link = pin_root / "signal" / "link_signal_generate"
    first = os.stat(link).st_ino

    victim = subprocess.Popen(["sleep", "30"])  # killed between the old pod and the new
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    newer = KillBpfSource(ctx)
    newer.start()
    try:
        assert newer.input.bpf is not None and newer.input.bpf.adopted
        assert os.stat(link).st_ino == first
        sink.wait("kill_events", target_pid=victim.pid)
    finally:
        newer.stop()


def test_a_second_edge_on_the_node_runs_a_copy_of_its_own(pin_root: Path) -> None:
    """A ring buffer's readers share one position: two edges on one pin would each see half."""
    a, b = ListSink(), ListSink()
    first, second = KillBpfSource(SourceContext(sink=a, pin_root=pin_root)), \
        KillBpfSource(SourceContext(sink=b, pin_root=pin_root))
    first.start()
    second.start()
    try:
        assert second.input.bpf is not None and second.input.bpf.private
        pid = _kill_event_seen(a)
        b.wait("kill_events", target_pid=pid)
    finally:
        second.stop()
        first.stop()
    assert sorted(p.name for p in (pin_root / "signal").iterdir()) == [
        "link_signal_generate", "manifest", "map_kill_events", "map_kill_lost"]


def test_events_that_wrap_around_the_ring_buffer_arrive_whole(pin_root: Path) -> None:
    """The kill program's ring buffer is 1 MiB and an event about 6 KiB: 400 kills go round it
    more than twice, and records that straddle its end are read whole (pins.RingBuffer)."""
    sink = ListSink()
    src = KillBpfSource(SourceContext(sink=sink, pin_root=pin_root))
    src.start()
    try:
        pids = []
        for _ in range(400):
            victim = subprocess.Popen(["sleep", "30"])
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            pids.append(victim.pid)
        rows = [sink.wait("kill_events", target_pid=pid) for pid in pids]
        # Every field read whole, the cgroup paths at the tail of each record too (killed before
        # or after its exec, a victim's comm is python or sleep).
        for pid, row in zip(pids, rows, strict=True):
            assert (row["target_tid"], row["signal"], row["sender_pid"]) == (pid, 9, os.getpid()), row
            assert row["target_comm"] in ("python", "sleep") and row["sender_comm"] == rows[0]["sender_comm"]
            assert row["cgroup_path"] == row["sender_cgroup_path"] == rows[0]["cgroup_path"] is not None, row
    finally:
        src.stop()
    assert src.status.lost == 0


def test_pxo_delete_removes_the_pinned_programs(tmp_path: Path) -> None:
    src = KillBpfSource(SourceContext(sink=ListSink()))  # the node's own pin directory
    src.start()
    src.stop()
    assert (pins.PIN_ROOT / "signal" / "link_signal_generate").exists()
    kept = subprocess.run([sys.executable, "-m", "pxo.cli.main", "delete", "--local", "--keep-pins", "--data-dir",
                           str(tmp_path / "local")], capture_output=True, text=True, timeout=60)
    assert kept.returncode == 0, kept.stderr
    assert (pins.PIN_ROOT / "signal" / "link_signal_generate").exists()  # --keep-pins: left for the next edge
    LocalDeployment(tmp_path / "local", say=lambda _s: None).delete()  # what `pxo delete --local` runs
    assert not pins.PIN_ROOT.exists()
