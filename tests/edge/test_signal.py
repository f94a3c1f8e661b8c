"""bpf/signal.bpf.c loaded into this kernel: SIGKILLs we send are recorded, the
kernel's own (a real OOM kill) are not.

Other tests (OOM drills, kills) run on this machine at the same time: every
assertion is about rows whose sender is this process or whose target is one
of our children, never about counts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pxo.edge.cgroups import ScratchCgroup, cgroup_of, memory_hierarchy
from pxo.edge.oomdrill import run_drill
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.signal import KillBpfSource
from tests.helpers import sink

pytestmark = pytest.mark.requires_bpf

SI_USER, SI_TKILL = 0, -6


class ListSink(sink.ListSink):
    def kills_of(self, pid: int) -> list[dict]:
        return self.where("kill_events", target_pid=pid)

    def wait_kill(self, pid: int, timeout: float = 10.0) -> dict:
        return self.wait("kill_events", timeout, target_pid=pid)

    def settle(self) -> None:
        """Wait until every signal sent before now has been read.

        The ring buffer hands out records in the order they were reserved, on
        every CPU, so once a marker kill is read, any row an earlier signal
        could have produced has been read too.
        """
        marker = subprocess.Popen(["sleep", "60"])
        os.kill(marker.pid, signal.SIGKILL)
        marker.wait()
        self.wait_kill(marker.pid)


@pytest.fixture(scope="module")
def kills() -> Iterator[ListSink]:
    sink = ListSink()
    src = KillBpfSource(SourceContext(sink=sink))
    src.start()
    try:
        yield sink
    finally:
        src.stop()
    assert src.status.state == "stopped", src.status


def wait_comm(pid: int, comm: str, timeout: float = 10.0) -> None:
    """Until ``pid`` has exec'd ``comm`` (bounded, so a broken child cannot hang the test)."""
    path = f"/proc/{pid}/comm"
    end = time.monotonic() + timeout
    while Path(path).read_text().strip() != comm and time.monotonic() < end:
        time.sleep(0.005)


def tgkill(pid: int, sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, pid, sig) != 0:  # a single-threaded child: its only thread id is its pid
        raise OSError(ctypes.get_errno(), "tgkill")


def pidfd_kill(pid: int, sig: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("send", "si_code", "group"), [
    (os.kill, SI_USER, True),
    (tgkill, SI_TKILL, False),
    (pidfd_kill, SI_USER, True),
], ids=["kill", "tgkill", "pidfd_send_signal"])
def test_sigkill_from_this_process_is_recorded_once(kills: ListSink, send: Callable[[int, int], None],
                                                    si_code: int, group: bool) -> None:
    with ScratchCgroup(64 << 20, prefix="pxo-kill-test") as cg:
        # The child joins its own cgroup, says so, then becomes `sleep`.
        child = subprocess.Popen(["sh", "-c", f"echo $$ > {cg.procs_file} && echo joined && exec sleep 60"],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "joined\n"
        wait_comm(child.pid, "sleep")
        send(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
        kills.settle()
    rows = kills.kills_of(child.pid)

    assert len(rows) == 1, rows
    row = rows[0]
    assert row["signal"] == signal.SIGKILL and row["si_code"] == si_code and row["whole_process"] is group
    assert row["result"] == 0  # delivered
    assert row["sender_pid"] == os.getpid() and row["sender_tid"] == threading.get_native_id()
    assert row["sender_cgroup_path"] == cgroup_of(memory_hierarchy())
    assert row["target_pid"] == row["target_tid"] == child.pid
    assert row["target_comm"] == "sleep"
    assert row["cgroup_path"] == cg.path  # the target's memory cgroup, not the sender's
    assert row["cgroup_id"] and row["cgroup_v2_path"]


def test_sigterm_is_not_recorded(kills: ListSink) -> None:
    child = subprocess.Popen(["sleep", "60"])
    os.kill(child.pid, signal.SIGTERM)  # fatal for sleep, but not a SIGKILL
    assert child.wait() == -signal.SIGTERM
    kills.settle()

    assert kills.kills_of(child.pid) == []


def test_oom_killers_sigkill_is_not_recorded(kills: ListSink) -> None:
    drill = run_drill(limit_mib=64, allocate_mib=256)
    assert drill.killed and drill.oom_kills == 1  # the kernel did kill it, with SI_KERNEL
    kills.settle()

    # Only the victim: removing the drill's cgroup may SIGKILL leftovers from
    # user space, but the victim was dead and reaped by then.
    assert kills.kills_of(drill.pid) == []
