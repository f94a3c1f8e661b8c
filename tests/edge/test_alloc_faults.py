"""alloc_faults, the default source of alloc_rate: the kernel's own page-fault counts, read
per interval from /proc and kept at exit by bpf/alloc.bpf.c (ALLOC_EXITS), against
children that allocate a known amount and whose own counts the kernel reports to
their parent (wait4's rusage).

Other tests run on this machine at the same time: only rows of our own children's
pids are looked at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.sources import DEFAULT_SOURCES, OPT_IN, SOURCES, build_sources
from pxo.edge.sources.alloc import PAGE_SIZE
from pxo.edge.sources.alloc_faults import PF_EXITING, AllocFaultsSource, read_stat
from pxo.edge.sources.base import SourceContext
from tests.helpers.sink import ListSink
from tests.helpers.workloads import CHILD_COMM, FAULTING_CHILD

MIB = 1 << 20
SIZE = 512 * MIB


def run_child(cg: ScratchCgroup, size: int, *, hold: float = 0.0) -> tuple[int, int]:
    """A child that allocates ``size`` bytes page by page, then (after ``hold`` seconds) exits;
    returns its pid and its page faults (minor + major) as the kernel reported them at its exit."""
    script = FAULTING_CHILD + (f"import time; time.sleep({hold})\n" if hold else "")
    child = subprocess.Popen([sys.executable, "-c", script, str(cg.procs_file), str(size), CHILD_COMM])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0
    return child.pid, usage.ru_minflt + usage.ru_majflt


def wait_reads(src: AllocFaultsSource, n: int, timeout: float = 10.0) -> None:
    target = src.reads + n
    end = time.monotonic() + timeout
    while src.reads < target and time.monotonic() < end:
        time.sleep(0.02)
    assert src.reads >= target, "the source stopped reading"


@pytest.mark.requires_bpf
def test_a_known_allocation_is_counted_for_its_process_and_memory_cgroup() -> None:
    sink = ListSink()
    src = AllocFaultsSource(SourceContext(sink=sink), interval=0.25)
    src.start()
    try:
        assert src.status.state == "running", src.status.detail  # exits are kept (eBPF loaded)
        wait_reads(src, 1)  # the baseline is read: what a process did before it is never counted
        with ScratchCgroup(1 << 30, prefix="pxo-alloc-test") as cg:
            # A child that exits within an interval (its last faults come from the exit
            # program), and one still alive across a few reads (from /proc, then at exit).
            short, short_faults = run_child(cg, SIZE)
            held, held_faults = run_child(cg, SIZE, hold=0.6)
            cgroup_id = os.stat(cg.dir).st_ino
            wait_reads(src, 2)
    finally:
        src.stop()

    rows = sink.where("alloc_rate")
    for pid, faults in ((short, short_faults), (held, held_faults)):
        ours = [r for r in rows if r["pid"] == pid]
        counted = sum(r["alloc_pages"] for r in ours)
        # Exactly the kernel's count: every fault of the child's life, none twice.
        assert counted == faults, (pid, counted, faults, ours)
        # The interpreter's own start-up faults come on top of the allocation.
        assert SIZE // PAGE_SIZE <= counted <= SIZE // PAGE_SIZE * 1.05 + 64 * MIB // PAGE_SIZE
        assert sum(r["alloc_bytes"] for r in ours if r["cgroup_path"] == cg.path) >= SIZE
        assert {r["cgroup_id"] for r in ours if r["cgroup_path"] == cg.path} == {cgroup_id}
        assert max(ours, key=lambda r: r["alloc_pages"])["comm"] == CHILD_COMM
        for r in ours:
            assert r["alloc_bytes"] == r["alloc_pages"] * PAGE_SIZE
            assert 0 < r["interval_s"] < 5  # the last of a stop, or a read a clock step brought forward, is short
    assert len([r for r in rows if r["pid"] == held]) >= 2  # read alive, then at its exit
    assert src.status.state == "stopped" and src.status.lost == 0


def test_without_ebpf_live_processes_are_still_counted(tmp_path: Path) -> None:
    sink = ListSink()
    src = AllocFaultsSource(SourceContext(sink=sink, use_bpf=False), interval=0.25)
    src.start()
    try:
        assert src.status.state == "degraded" and "exit" in src.status.detail
        child = subprocess.Popen([sys.executable, "-c", "import mmap, sys, time\n"
                                  "m = mmap.mmap(-1, 64 << 20)\n"
                                  "m.write(b'x' * (64 << 20)); print(flush=True); time.sleep(30)"],
                                 stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline()
            wait_reads(src, 2)
            counted = sum(r["alloc_pages"] for r in sink.where("alloc_rate", pid=child.pid))
            assert counted >= (64 << 20) // PAGE_SIZE
        finally:
            child.kill()
            child.wait()
    finally:
        src.stop()


# FAULTING_CHILD, then waits for its standard input to close and exits at once (os._exit: nothing
# unmapped first), so that the kernel unmaps the whole allocation in do_exit(): tens of ms.
EXITING_CHILD = r"""
import ctypes, mmap, os, sys
procs, size, comm = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm), 0, 0, 0)  # PR_SET_NAME
with open(procs, "w") as f:
    f.write(str(os.getpid()))
m = mmap.mmap(-1, size)
m.madvise(mmap.MADV_NOHUGEPAGE)
for off in range(0, size, mmap.PAGESIZE):
    m[off] = 1
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read(1)
os._exit(0)
"""


@pytest.mark.requires_bpf
def test_a_process_read_while_it_exits_is_charged_to_its_cgroup() -> None:
    """Read in the window of test_a_process_on_its_way_out_is_not_charged_to_the_root, for real: a
    child's last read is made while the kernel unmaps its memory in do_exit() (PF_EXITING set, not yet
    a zombie; on this host's cgroup v1 its /proc/PID/cgroup says "/" by then). Every fault of its
    life is counted once, all in its own cgroup."""
    sink = ListSink()
    src = AllocFaultsSource(SourceContext(sink=sink), interval=60)  # read by the test, not its thread
    src.open()
    children: list[tuple[int, int]] = []
    caught = 0
    try:
        assert src.keeps_exits, src.status.detail
        src.sample(0.0)  # the baseline
        with ScratchCgroup(1 << 30, prefix="pxo-alloc-exit") as cg:
            for _ in range(5):  # until a read lands in the window (the first almost always does)
                child = subprocess.Popen([sys.executable, "-c", EXITING_CHILD, str(cg.procs_file), str(SIZE),
                                          CHILD_COMM], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                assert child.stdout is not None and child.stdin is not None
                assert child.stdout.readline() == b"ready\n"
                stat = Path(f"/proc/{child.pid}/stat")
                child.stdin.close()  # it exits now
                end = time.monotonic() + 10
                while (st := read_stat(stat)) is not None and not st.exiting and time.monotonic() < end:
                    pass
                src.read()
                after = read_stat(stat)
                if after is not None and after.exiting and not after.zombie:
                    caught += 1  # exiting before the read began and after it ended: read in the window
                _, status, usage = os.wait4(child.pid, 0)
                child.returncode = os.waitstatus_to_exitcode(status)
                assert child.returncode == 0
                children.append((child.pid, usage.ru_minflt + usage.ru_majflt))
                src.read()  # its exit record
                if caught:
                    break
            cgroup_path = cg.path
    finally:
        src.close()
    assert caught, "no read landed while a child was exiting: the test did not test anything"
    for pid, faults in children:
        ours = [(r["cgroup_path"], r["alloc_pages"]) for r in sink.where("alloc_rate", pid=pid)]
        assert sum(pages for _, pages in ours) == faults, (pid, faults, ours)
        assert {path for path, _ in ours} == {cgroup_path}, ours


def test_stat_fields_are_read_past_a_comm_with_parentheses_and_spaces(tmp_path: Path) -> None:
    # /proc/PID/stat of a process named "a) (b c": minflt 1000, majflt 7, starttime 4242
    fields = ["S", "1", "1", "1", "0", "-1", "4194560", "1000", "0", "7", "0"] + ["0"] * 8 + ["4242"] + ["0"] * 30
    (tmp_path / "stat").write_bytes(b"123 (a) (b c) " + " ".join(fields).encode() + b"\n")
    st = read_stat(tmp_path / "stat")
    assert st is not None and (st.comm, st.faults, st.start) == ("a) (b c", 1007, 4242)
    assert read_stat(tmp_path / "gone") is None


def test_the_exact_probe_is_opt_in_and_never_runs_beside_the_default() -> None:
    assert "alloc_faults" in DEFAULT_SOURCES and "alloc_bpf" not in DEFAULT_SOURCES
    assert {"alloc_bpf"} == OPT_IN and set(DEFAULT_SOURCES) | OPT_IN == set(SOURCES)
    ctx = SourceContext(sink=ListSink())
    assert [s.name for s in build_sources(["alloc_faults", "alloc_bpf"], ctx)] == ["alloc_bpf"]
    assert [s.name for s in build_sources(["alloc_faults"], ctx)] == ["alloc_faults"]


class _Exits(AllocFaultsSource):
    """The source over a fixture /proc, with the exits the kernel would have kept given by the test."""

    exited: list[tuple[int, int, int, str | None, int]] = []
    keeps_exits = True  # as with its eBPF program: the test gives the exits

    def _exits(self) -> list[tuple[int, int, int, str | None, int]]:
        out, self.exited = self.exited, []
        return out


def _proc(root: Path, procs: dict[int, tuple[int, int]]) -> None:
    """A /proc holding ``procs`` (pid -> (starttime, minflt)) and nothing else."""
    for d in root.iterdir():
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    for pid, (start, faults) in procs.items():
        (root / str(pid)).mkdir()
        fields = ["S"] + ["0"] * 6 + [str(faults)] + ["0"] * 11 + [str(start)] + ["0"] * 30
        (root / str(pid) / "stat").write_text(f"{pid} (p{pid}) " + " ".join(fields) + "\n")
        (root / str(pid) / "cgroup").write_text("0::/\n")


def test_exits_reused_pids_and_zombies_are_counted_once(tmp_path: Path) -> None:
    sink = ListSink()
    src = _Exits(SourceContext(sink=sink, proc=tmp_path, use_bpf=False), interval=60)
    src.open()

    def read(procs: dict[int, tuple[int, int]],
             exited: list[tuple[int, int, int, str | None, int]]) -> list[tuple[int, int]]:
        _proc(tmp_path, procs)
        src.exited = exited
        before = len(sink.rows)
        if src.reads:
            src.read()
        else:
            src.sample(0.0)
        return sorted((r["pid"], r["alloc_pages"]) for _, r in sink.rows[before:])

    assert read({100: (500, 10), 200: (600, 50)}, []) == []  # the baseline
    assert read({100: (500, 30), 200: (600, 50)}, []) == [(100, 20)]
    # 100 exits with 45 faults and its pid goes to a new process; 200 exits, a zombie still listed
    assert read({100: (900, 5), 200: (600, 52)}, [(100, 500, 0, "p100", 45), (200, 600, 0, "p200", 52)]) \
        == [(100, 5), (100, 15), (200, 2)]
    # the zombie, still listed, and the new 100: nothing counted twice
    assert read({100: (900, 5), 200: (600, 52)}, []) == []
    assert read({100: (900, 8)}, []) == [(100, 3)]
    # an exit of a process never read that started before the source: no baseline, not counted
    assert read({100: (900, 8)}, [(300, 1, 0, "p300", 70)]) == []


def test_a_zombies_last_faults_go_to_the_cgroup_it_ran_in(tmp_path: Path) -> None:
    """An exited process not yet reaped is still listed in /proc, but its /proc/PID/cgroup names the
    root of a v1 hierarchy (`4:memory:/` on this host's 6.18): its last faults are counted once, in
    the cgroup it ran in, never in "/" (a CI run charged 250 MiB of a known allocation to "/")."""
    sink = ListSink()
    src = _Exits(SourceContext(sink=sink, proc=tmp_path, use_bpf=False), interval=60)
    src.open()

    def listed(state: str, faults: int, cgroup: str) -> None:
        (tmp_path / "100").mkdir(exist_ok=True)
        fields = [state] + ["0"] * 6 + [str(faults)] + ["0"] * 11 + ["500"] + ["0"] * 30
        (tmp_path / "100" / "stat").write_text("100 (p100) " + " ".join(fields) + "\n")
        (tmp_path / "100" / "cgroup").write_text(f"4:memory:{cgroup}\n0::{cgroup}\n")

    listed("S", 10, "/pod-a")
    src.sample(0.0)
    listed("R", 30, "/pod-a")
    src.read()
    assert [(r["alloc_pages"], r["cgroup_path"]) for _, r in sink.rows] == [(20, "/pod-a")]
    listed("Z", 90, "/")  # exited: 60 more faults; its exit record says so too
    src.exited = [(100, 500, 0, "p100", 90)]
    src.read()
    src.read()  # still listed, unreaped: nothing twice
    assert [(r["alloc_pages"], r["cgroup_path"]) for _, r in sink.rows] == [(20, "/pod-a"), (60, "/pod-a")]
    # Without exit records (no eBPF), the zombie's listing is all there is: where it was last read.
    src.keeps_exits = False
    listed("S", 100, "/pod-a")
    (tmp_path / "100" / "stat").write_text((tmp_path / "100" / "stat").read_text().replace(" 500 ", " 700 "))
    src.read()
    listed("Z", 130, "/")
    (tmp_path / "100" / "stat").write_text((tmp_path / "100" / "stat").read_text().replace(" 500 ", " 700 "))
    src.read()
    assert [(r["alloc_pages"], r["cgroup_path"]) for _, r in sink.rows][2:] == [(100, "/pod-a"), (30, "/pod-a")]


RUNNING, EXITING = 0x400000, 0x400000 | PF_EXITING  # /proc/PID/stat flags: a live process (PF_RANDOMIZE), one exiting


def _listed(root: Path, pid: int, state: str, faults: int, cgroup: str, flags: int = RUNNING) -> None:
    """``pid`` in a fixture /proc: its state, kernel flags (PF_EXITING is 0x4), faults (starttime 500)
    and memory cgroup (a v1 and a v2 line)."""
    (root / str(pid)).mkdir(exist_ok=True)
    fields = [state] + ["0"] * 5 + [str(flags), str(faults)] + ["0"] * 11 + ["500"] + ["0"] * 30
    (root / str(pid) / "stat").write_text(f"{pid} (p{pid}) " + " ".join(fields) + "\n")
    (root / str(pid) / "cgroup").write_text(f"4:memory:{cgroup}\n0::{cgroup}\n")


def _charged(sink: ListSink) -> list[tuple[int, int, str]]:
    """(pid, pages, cgroup path) of every alloc_rate row so far."""
    return [(r["pid"], r["alloc_pages"], r["cgroup_path"]) for _, r in sink.rows]


def test_a_process_on_its_way_out_is_not_charged_to_the_root(tmp_path: Path) -> None:
    """From the start of do_exit() (PF_EXITING) a cgroup v1 hierarchy's line in /proc/PID/cgroup
    says "/", while /proc/PID/stat still shows it running (R, or D while its memory is unmapped)
    and its exit record is not written yet. A CI run read a 256 MiB allocation's process in that
    window and charged all of it to "/" (tests/kernels/test_scenarios.py's known allocation)."""
    sink = ListSink()
    src = _Exits(SourceContext(sink=sink, proc=tmp_path, use_bpf=False), interval=60)
    src.open()

    _listed(tmp_path, 100, "S", 10, "/pod-a")
    _listed(tmp_path, 200, "S", 10, "/pod-b")
    src.sample(0.0)
    _listed(tmp_path, 100, "R", 30, "/pod-a")
    _listed(tmp_path, 200, "R", 40, "/pod-b")
    src.read()
    assert _charged(sink) == [(100, 20, "/pod-a"), (200, 30, "/pod-b")]
    # both exiting: 100's exit record is not in yet, 200's is (its exit tracepoint has run)
    _listed(tmp_path, 100, "D", 90, "/", flags=EXITING)
    _listed(tmp_path, 200, "R", 70, "/", flags=EXITING)
    src.exited = [(200, 500, 0, "p200", 75)]
    src.read()
    assert _charged(sink)[2:] == [(200, 35, "/pod-b")]
    # 100's record comes at the next read, once it is a zombie: counted from its last live read
    _listed(tmp_path, 100, "Z", 95, "/", flags=EXITING)
    src.exited = [(100, 500, 0, "p100", 95)]
    src.read()
    src.read()  # still listed, unreaped: nothing twice
    assert _charged(sink)[3:] == [(100, 65, "/pod-a")]
    # Without exit records (no eBPF): where it was last read alive.
    src.keeps_exits = False
    _proc(tmp_path, {})  # every process gone
    _listed(tmp_path, 300, "S", 10, "/pod-c")
    src.read()
    _listed(tmp_path, 300, "R", 50, "/", flags=EXITING)
    src.read()
    assert _charged(sink)[4:] == [(300, 10, "/pod-c"), (300, 40, "/pod-c")]


def test_a_process_that_begins_to_exit_between_its_two_reads_is_not_charged_to_the_root(tmp_path: Path) -> None:
    """A listing reads every process's stat, then the cgroup of those that faulted. A CI run (after
    the test above) charged the known allocation's process to "/" again: it began to exit between
    the two reads, its stat without PF_EXITING and its cgroup already "/". A process really in the
    root cgroup is still charged there."""

    class Racing(_Exits):
        exits_at: set[int] = set()  # these begin to exit just before their cgroup is read

        def _memcg_of_pid(self, pid: int) -> tuple[str | None, int | None]:
            if pid in self.exits_at:
                _listed(tmp_path, pid, "R", 90, "/", flags=EXITING)
            return super()._memcg_of_pid(pid)

    sink = ListSink()
    src = Racing(SourceContext(sink=sink, proc=tmp_path, use_bpf=False), interval=60)
    src.open()

    _listed(tmp_path, 100, "S", 10, "/pod-a")
    _listed(tmp_path, 200, "S", 10, "/")  # in the root cgroup, and stays alive
    src.sample(0.0)
    _listed(tmp_path, 100, "R", 30, "/pod-a")
    _listed(tmp_path, 200, "R", 20, "/")
    src.exits_at = {100}
    src.read()
    assert _charged(sink) == [(200, 10, "/")]  # 100 is left to its exit record
    src.exits_at = set()
    _proc(tmp_path, {200: (500, 20)})  # 100 reaped, 200 as it was
    src.exited = [(100, 500, 0, "p100", 90)]
    src.read()
    assert _charged(sink)[1:] == [(100, 80, None)]  # from its baseline; the record's memcg id 0 resolves to nothing
