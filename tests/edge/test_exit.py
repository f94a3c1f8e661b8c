"""bpf/exit.bpf.c loaded into this kernel, against processes that end in known ways.

Other tests (OOM drills, kills) run on this machine at the same time: every
assertion is about rows for our own children's pids, never about counts.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pxo.edge.cgroups import ScratchCgroup, cgroup_of, memory_hierarchy
from pxo.edge.oomdrill import DRILL_COMM, run_drill
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.exit import ExitEventC, ProcessExitBpfSource, event_row
from tests.helpers import sink

pytestmark = pytest.mark.requires_bpf


class ListSink(sink.ListSink):
    def exits(self, pid: int) -> list[dict]:
        return self.where("process_exits", pid=pid)

    def wait_exit(self, pid: int, timeout: float = 10.0) -> dict:
        return self.wait("process_exits", timeout, pid=pid)

    def settle(self) -> None:
        """Wait until every exit that happened before now has been read.

        The ring buffer hands out records in the order they were reserved, on
        every CPU, so once a marker process's exit is read, any row an earlier
        exit could produce (a duplicate, say) has been read too.
        """
        marker = subprocess.Popen(["true"])
        marker.wait()
        self.wait_exit(marker.pid)


@pytest.fixture(scope="module", params=[None, False], ids=["as-btf-says", "last-live-thread"])
def exits(request: pytest.FixtureRequest) -> Iterator[ListSink]:
    """Both ways of telling a process's last thread: the tracepoint's group_dead where this
    kernel passes it, and the signal struct's live count that older kernels need."""
    sink = ListSink()
    src = ProcessExitBpfSource(SourceContext(sink=sink), group_dead=request.param)
    src.start()
    try:
        yield sink
    finally:
        src.stop()
    assert src.status.state == "stopped", src.status


def own_memcg() -> str:
    return cgroup_of(memory_hierarchy())


def test_exit_status_of_a_child_in_its_own_cgroup(exits: ListSink) -> None:
    with ScratchCgroup(64 << 20, prefix="pxo-exit-test") as cg:
        # The child joins the cgroup itself, then exits 3: the row must name that cgroup.
        child = subprocess.Popen(["sh", "-c", f"echo $$ > {cg.procs_file} && exit 3"])
        assert child.wait() == 3
        row = exits.wait_exit(child.pid)
    exits.settle()

    assert len(exits.exits(child.pid)) == 1
    assert row["exit_status"] == 3 and row["signal"] == 0 and row["core_dumped"] is False
    assert row["tid"] == child.pid and row["ppid"] == os.getpid()
    assert row["comm"] == "sh"
    assert row["cgroup_path"] == cg.path  # walked in the kernel, before the cgroup was removed
    assert row["cgroup_id"]
    assert row["cgroup_v2_path"]  # the kernel's walk, or the unified hierarchy's root


def test_sigkill_is_reported_as_the_signal(exits: ListSink) -> None:
    child = subprocess.Popen(["sleep", "60"])
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    row = exits.wait_exit(child.pid)

    assert row["signal"] == signal.SIGKILL and row["exit_status"] == 0 and row["core_dumped"] is False
    assert row["comm"] == "sleep" and row["ppid"] == os.getpid()
    assert row["cgroup_path"] == own_memcg()


def core_pattern() -> str:
    return Path("/proc/sys/kernel/core_pattern").read_text().strip()


def test_core_dump_matches_the_wait_status(exits: ListSink, tmp_path: Path) -> None:
    pattern = core_pattern()
    if pattern.startswith("|") or pattern.startswith("/"):
        pytest.skip(f"core_pattern {pattern!r} would write the core outside this test's directory")
    child = subprocess.Popen(["sleep", "60"], cwd=tmp_path)
    resource.prlimit(child.pid, resource.RLIMIT_CORE, (64 << 20, 64 << 20))
    os.kill(child.pid, signal.SIGQUIT)  # default action: terminate and dump core
    _pid, status = os.waitpid(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert os.WIFSIGNALED(status) and os.WCOREDUMP(status), "the kernel dumped no core"
    row = exits.wait_exit(child.pid)

    # Exactly what the parent's wait() got: signal, "core dumped" bit and all.
    assert (row["exit_status"], row["signal"], row["core_dumped"]) == (0, signal.SIGQUIT, True)


# Threads that end on their own, then one that ends the whole process: one row.
_THREADS_THEN_EXIT_GROUP = r"""
import os, threading, time
workers = [threading.Thread(target=time.sleep, args=(0.01,)) for _ in range(4)]
for w in workers: w.start()
for w in workers: w.join()
threading.Thread(target=os._exit, args=(7,)).start()  # exit_group(7) from a non-leader thread
time.sleep(60)
"""


def test_one_row_per_process_not_per_thread(exits: ListSink) -> None:
    child = subprocess.Popen([sys.executable, "-c", _THREADS_THEN_EXIT_GROUP])
    assert child.wait(timeout=60) == 7
    row = exits.wait_exit(child.pid)
    exits.settle()

    assert len(exits.exits(child.pid)) == 1  # not one per thread (six of them exited)
    assert row["exit_status"] == 7 and row["signal"] == 0
    assert row["ppid"] == os.getpid()


# The leader leaves first (pthread_exit in main); a worker thread ends the
# process with a bare exit(2) syscall, so no group exit code was ever set:
# the kernel takes it from this last thread.
_LEADER_FIRST = r"""
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None)
sys_exit, leader = int(sys.argv[1]), os.getpid()

def last() -> None:
    for _ in range(5000):  # until the leader is a zombie (bounded: a broken run still ends)
        with open(f"/proc/self/task/{leader}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.002)
    libc.prctl(15, ctypes.c_char_p(b"pxo-last"), 0, 0, 0)  # PR_SET_NAME: this thread's own name
    sys.stdout.write(f"{threading.get_native_id()}\n"); sys.stdout.flush()
    libc.syscall(sys_exit, 4)  # this thread only

threading.Thread(target=last).start()
libc.pthread_exit(None)
"""

SYS_EXIT = {"x86_64": 60, "aarch64": 93}


@pytest.mark.skipif(platform.machine() not in SYS_EXIT, reason="needs the exit(2) syscall number")
def test_process_whose_leader_exits_first_is_reported_once_by_its_last_thread(exits: ListSink) -> None:
    child = subprocess.Popen([sys.executable, "-c", _LEADER_FIRST, str(SYS_EXIT[platform.machine()])],
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 4, out
    last_tid = int(out.split()[0])
    row = exits.wait_exit(child.pid)
    exits.settle()

    assert len(exits.exits(child.pid)) == 1  # the leader's own exit did not count as the process's
    assert row["tid"] == last_tid != child.pid
    assert row["exit_status"] == 4 and row["signal"] == 0
    assert row["comm"] == Path(sys.executable).name[:15]  # the process's (leader's) name, not "pxo-last"


def test_oom_kill_victim_exits_with_sigkill_in_its_cgroup(exits: ListSink) -> None:
    drill = run_drill(limit_mib=64, allocate_mib=256)
    assert drill.killed
    row = exits.wait_exit(drill.pid)

    assert row["signal"] == signal.SIGKILL and row["exit_status"] == 0
    assert row["comm"] == DRILL_COMM
    assert row["cgroup_path"] == drill.cgroup_path  # the victim's memory cgroup, walked in the kernel
    assert row["ppid"] == os.getpid()


# -- user-space decoding of the kernel's record (no kernel needed, but kept with its source) --


def make_event(*, code: int, v2_is_memcg: int = 0, v2_is_root: int = 0, v2_id: int = 0) -> ExitEventC:
    e = ExitEventC(boot_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME), tgid=10, tid=11, ppid=1,
                   exit_code=code, cgroup_v2_id=v2_id, v2_is_memcg=v2_is_memcg, v2_is_root=v2_is_root,
                   comm=b"app")
    e.memcg.id, e.memcg.depth = 42, 2
    for i, name in enumerate([b"leaf", b"pod"]):
        ctypes.memmove(e.memcg.names[i], name, len(name))
    return e


@pytest.mark.parametrize(("code", "decoded"), [
    (3 << 8, (3, 0, False)),
    (9, (0, 9, False)),
    (0x80 | 11, (0, 11, True)),
    (255 << 8, (255, 0, False)),
])
def test_wait_status_decoding(code: int, decoded: tuple[int, int, bool]) -> None:
    row = event_row(make_event(code=code))
    assert (row["exit_status"], row["signal"], row["core_dumped"]) == decoded
    assert row["pid"] == 10 and row["tid"] == 11 and row["comm"] == "app"
    assert row["cgroup_path"] == "/pod/leaf" and row["cgroup_id"] == 42


@pytest.mark.parametrize(("flags", "expected"), [
    ({"v2_is_memcg": 1, "v2_id": 42}, "/pod/leaf"),  # memory on the unified hierarchy: the kernel's walk
    ({"v2_is_root": 1, "v2_id": 1}, "/"),            # unified hierarchy unused (maybe unmounted)
    ({"v2_id": 77}, "/resolved/77"),                 # elsewhere: resolved by id in user space
    ({"v2_id": 0}, None),
])
def test_v2_path_comes_from_the_walk_the_root_or_the_resolver(flags: dict, expected: str | None) -> None:
    resolve: Callable[[int], str | None] = lambda i: f"/resolved/{i}" if i else None  # noqa: E731
    assert event_row(make_event(code=0, **flags), v2_path=resolve)["cgroup_v2_path"] == expected
