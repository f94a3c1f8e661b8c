"""An event source that fails is opened again after a pause, as a restarted edge would open
it, and loses nothing: its pinned program kept capturing meanwhile, and the OOM source
reads the kernel log's backlog again and drops what the store already has. One event a
source cannot turn into a row is counted lost; the events behind it still arrive.

The failures are real faults in the real objects (a file descriptor or an epoll set
swapped or closed under the source), and the kills are real."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.kmsg import Kill, KmsgInput
from pxo.edge.oomdrill import start_allocator
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.oom import OomSource
from pxo.edge.sources.signal import KillBpfSource
from pxo.edge.store import Store
from tests.helpers.sink import ListSink

pytestmark = pytest.mark.requires_bpf


def _killed() -> int:
    victim = subprocess.Popen(["sleep", "30"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return victim.pid


def _wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    return bool(cond())


def test_a_failed_ring_buffer_source_is_opened_again_and_reads_what_it_missed(pin_root: Path) -> None:
    sink = ListSink()
    src = KillBpfSource(SourceContext(sink=sink, pin_root=pin_root))
    src.RESTART_DELAYS = (1.0, 2.0)
    src.start()
    try:
        before = _killed()
        sink.wait("kill_events", target_pid=before)
        assert src.input._ring is not None
        src.input._ring._poller.close()  # its next wait fails (ValueError): the source's poll raises
        assert _wait(lambda: src.status.state == "failed"), src.status
        assert "opening it again in 1 s" in src.status.detail
        missed = [_killed() for _ in range(5)]  # while it is failed: the pinned program keeps them
        assert src.status.state == "failed" and not any(sink.where("kill_events", target_pid=p) for p in missed)
        assert _wait(lambda: src.status.state == "running")
        assert src.restarts == 1 and src.input.adopted
        after = _killed()
        for pid in [before, *missed, after]:
            sink.wait("kill_events", target_pid=pid)
        time.sleep(0.5)
        for pid in [before, *missed, after]:
            assert len(sink.where("kill_events", target_pid=pid)) == 1, pid  # once each
    finally:
        src.stop()
    assert src.status.state == "stopped" and src.status.lost == 0


def test_an_event_that_cannot_be_read_is_counted_lost_and_the_rest_arrive(
        pin_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = ListSink()
    src = KillBpfSource(SourceContext(sink=sink, pin_root=pin_root))
    bad: set[int] = set()
    row = src.row

    def row_with_a_bug(event):  # type: ignore[no-untyped-def]
        if event.target_tid in bad:
            raise OverflowError("a value the row code did not expect")
        return row(event)

    src.row = row_with_a_bug  # type: ignore[method-assign]
    src.start()
    try:
        victim = subprocess.Popen(["sleep", "30"])
        bad.add(victim.pid)
        with caplog.at_level(logging.ERROR):
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            good = _killed()
            sink.wait("kill_events", target_pid=good)
        assert not sink.where("kill_events", target_pid=victim.pid)
        assert src.status.state == "running" and src.restarts == 0
        assert src.input.dropped == 1
        assert "an event could not be read (1 dropped so far)" in caplog.text
        assert "OverflowError" in caplog.text
        src.input.poll(0.0)
        assert src.status.lost == 1
    finally:
        src.stop()


def test_a_failed_oom_source_is_opened_again_and_every_kill_is_written_once(pin_root: Path, tmp_path: Path) -> None:
    """The kernel log's file descriptor turns into a directory's under the source: its read
    fails (EISDIR). Kills before, during the pause and after are each in the store once, with
    what eBPF saw (bpf+kmsg), and none of the log's older kills is written again."""
    store = Store(tmp_path / "edge.duckdb", OomSource.tables, flush_interval=0.05)
    store.start()
    src = OomSource(SourceContext(sink=store, oom_recorded=store.oom_kill_recorded, pin_root=pin_root))
    src.RESTART_DELAYS = (2.0,)
    src.start()
    try:
        old = store.rows("SELECT count(*) AS n FROM oom_events")[0]["n"]  # the log's backlog, written at start
        with ScratchCgroup(32 << 20, prefix="pxo-restart") as cg:
            def kill() -> int:
                p = start_allocator(cg, 128)
                p.wait(timeout=60)
                assert p.returncode == -signal.SIGKILL
                return p.pid

            before = [kill()]
            assert _wait(lambda: bool(store.rows(f"SELECT 1 FROM oom_events WHERE pid = {before[0]}")))
            assert src.kmsg.fd is not None
            d = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
            os.dup2(d, src.kmsg.fd)  # the same number, now a directory: read() fails with EISDIR
            os.close(d)
            assert _wait(lambda: src.status.state == "failed"), src.status
            assert "EISDIR" in src.status.detail or "Is a directory" in src.status.detail
            during = [kill() for _ in range(3)]
            assert src.status.state == "failed"
            assert _wait(lambda: src.status.state == "running", timeout=30), src.status
            after = [kill()]
            pids = before + during + after
            assert _wait(lambda: store.rows(
                f"SELECT count(*) AS n FROM oom_events WHERE pid IN ({', '.join(map(str, pids))})")[0]["n"]
                >= len(pids))
            time.sleep(src.join_window + 0.5)  # a duplicate would be written by now
            rows = store.rows(f"SELECT pid, cgroup_path, \"constraint\", origin FROM oom_events "
                              f"WHERE pid IN ({', '.join(map(str, pids))})")
    finally:
        src.stop()
    total = store.rows("SELECT count(*) AS n FROM oom_events")[0]["n"]
    store.close()
    assert sorted(r["pid"] for r in rows) == sorted(pids), rows  # each exactly once
    for r in rows:
        assert (r["cgroup_path"], r["constraint"], r["origin"]) == (cg.path, "memcg", "bpf+kmsg"), r
    assert total == old + len(pids)  # the log's older kills, read again at the reopening, not written twice
    assert src.restarts == 1


def test_a_kernel_log_record_that_cannot_be_read_does_not_stop_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A record the parser trips on (written to the real /dev/kmsg, the parser made to trip on
    it) is counted and logged; the OOM kill logged after it still arrives."""
    kills: list[Kill] = []
    kmsg = KmsgInput(Path("/dev/kmsg"), on_kill=lambda k, backlog: None if backlog else kills.append(k))
    kmsg.open()
    marker = f"pxo-test-poison-{uuid.uuid4().hex[:8]}"
    parser = kmsg._parser
    feed = parser.feed

    def feed_with_a_bug(rec):  # type: ignore[no-untyped-def]
        if marker in rec.text:
            raise IndexError("a record the parser did not expect")
        return feed(rec)

    parser.feed = feed_with_a_bug  # type: ignore[method-assign]
    try:
        with open("/dev/kmsg", "w") as f:
            f.write(f"{marker}\n")
        with caplog.at_level(logging.ERROR), ScratchCgroup(32 << 20, prefix="pxo-kmsg") as cg:
            p = start_allocator(cg, 128)
            p.wait(timeout=60)
            assert p.returncode == -signal.SIGKILL
            assert _wait(lambda: (kmsg.read(), any(k.pid == p.pid for k in kills))[1])
    finally:
        kmsg.close()
    assert kmsg.bad == 1
    assert "a record could not be read (1 so far)" in caplog.text and marker in caplog.text
