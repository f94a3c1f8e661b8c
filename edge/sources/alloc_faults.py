"""alloc_rate from the page faults the kernel already counts: the edge's default source of the table.

Every page fault is counted by the kernel in the faulting task (``min_flt`` /
``maj_flt``, summed over a process's threads in /proc/PID/stat), whether or not
anyone reads it. Once per interval this source reads every process's counts and
writes one alloc_rate row per process whose count grew, charged to the memory
cgroup the process is in at that moment: one page per fault. No program runs
per page or per fault, so a page-fault-bound workload pays nothing for it
(bench/overhead.py). A process that exits between two reads would take its last
faults with it: bpf/alloc_faults.bpf.c keeps, at each process
exit (rare next to faults), its final counts, memory cgroup and name, and this
source drains them with the next read. Without eBPF the source still runs and
says that exits are missed (degraded).

What it sees, against the exact opt-in source alloc_bpf (kmem:mm_page_alloc):
faults of anonymous memory (one new page each), copy-on-write, file mappings;
not page cache filled by read(), slab or page tables. A transparent huge page
is one fault, counted as one page; a fault that maps a page already in memory
(a shared library's page cache) counts one page that was not allocated. For the
usual question (which process or cgroup is growing its memory) faults are what
grows it. A process that moved between cgroups within an interval is charged
to the cgroup it is in at the end.

The cost is in the edge: one read of /proc/PID/stat per process per interval
(about 20 us each), and of /proc/PID/cgroup per process that faulted.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pxo.common.timeutil import from_unix_seconds
from pxo.edge import pins
from pxo.edge.bpf import PXO_COMM_LEN, SharedStruct, comm, load_program, read_counter
from pxo.edge.cgroups import CgroupError, CgroupResolver, Hierarchy, memory_hierarchy
from pxo.edge.errors import EdgeError
from pxo.edge.sources.alloc import ALLOC_RATE, PAGE_SIZE, map_batches
from pxo.edge.sources.base import SamplingSource, SourceContext
from pxo.edge.sources.procfs import memcg_of

log = logging.getLogger(__name__)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat's starttime unit (USER_HZ)
# include/linux/sched.h: set at the start of do_exit(), in /proc/PID/stat's flags. From then on a
# cgroup v1 hierarchy's line in /proc/PID/cgroup says "/" (proc_cgroup_show), long before the
# process is a zombie: unmapping a large address space takes tens of milliseconds.
PF_EXITING = 0x00000004


class AllocExitC(SharedStruct):
    """Mirror of struct alloc_exit: keep in sync with bpf/alloc_faults.h."""

    c_header = "alloc_faults.h"
    c_struct = "alloc_exit"
    _fields_ = [
        ("start_boottime_ns", ctypes.c_uint64),
        ("memcg_id", ctypes.c_uint64),
        ("faults", ctypes.c_uint64),
        ("comm", ctypes.c_char * PXO_COMM_LEN),
    ]


@dataclass
class _Seen:
    start: int  # /proc/PID/stat starttime, clock ticks since boot: a reused pid has another
    faults: int  # minflt + majflt at the last read
    path: str | None = None  # its memory cgroup when last read (an exit's id may be too new to resolve)
    cgid: int | None = None


@dataclass
class _Stat:
    comm: str
    start: int
    faults: int
    zombie: bool = False  # exited, not yet reaped
    exiting: bool = False  # in the kernel's exit path (PF_EXITING), a zombie or not yet one


def read_stat(path: Path) -> _Stat | None:
    """comm, starttime and minflt + majflt from /proc/PID/stat; None if the process is gone."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, _, tail = data.rpartition(b")")  # comm may hold spaces and parentheses: it ends at the last ")"
    fields = tail.split()
    if len(fields) < 20:
        return None
    # fields[0] is field 3 (state): flags is field 9, minflt 10, majflt 12, starttime 22
    zombie = fields[0] == b"Z"
    return _Stat(head.partition(b"(")[2].decode(errors="replace"), int(fields[19]),
                 int(fields[7]) + int(fields[9]), zombie, zombie or bool(int(fields[6]) & PF_EXITING))


# The members the exit program reads beyond every program's (edge/kernel.py), as -D flags
# (the loader's facts should record them: edge/loader.py EXTRA_MEMBERS)
EXIT_MEMBERS = {
    "TASK_MIN_FLT": ("task_struct", "min_flt"),
    "TASK_MAJ_FLT": ("task_struct", "maj_flt"),
    "TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
    "SIGNAL_MIN_FLT": ("signal_struct", "min_flt"),
    "SIGNAL_MAJ_FLT": ("signal_struct", "maj_flt"),
}


class AllocFaultsSource(SamplingSource):
    """Reads every process's page-fault counts each ``interval`` seconds into alloc_rate rows."""

    name = "alloc_faults"
    tables = (ALLOC_RATE,)

    def __init__(self, ctx: SourceContext, *, interval: float = 1.0, max_exits: int = 4096,
                 hierarchy: Hierarchy | None = None) -> None:
        """``interval``: seconds per row; ``max_exits``: processes whose exit the kernel
        keeps per interval (beyond it, an exited process's last faults are lost and
        counted in the status); ``hierarchy``: the memory cgroup hierarchy (found from
        the mount table when None)."""
        if max_exits < 1:
            raise ValueError("need max_exits >= 1")
        super().__init__(ctx, period=interval)
        self.max_exits = max_exits
        self.reads = 0  # reads so far, the baseline first (tests wait on it)
        self._hierarchy = hierarchy
        self._resolver: CgroupResolver | None = None
        self._seen: dict[int, _Seen] = {}
        self._bpf: Any = None
        self._buffers: tuple[Any, Any] | None = None
        self._opened_ticks = 0  # CLOCK_BOOTTIME at the baseline read, in clock ticks
        self._started = 0.0  # time.monotonic() at the start of the current interval

    # -- lifecycle --------------------------------------------------------------

    def open(self) -> None:
        if self._hierarchy is None:
            try:
                self._hierarchy = memory_hierarchy(self.ctx.mountinfo)
            except (CgroupError, OSError) as exc:
                log.warning("alloc_rate: memory cgroup paths off (%s)", exc)
        if self._hierarchy is not None:
            self._resolver = CgroupResolver(self._hierarchy)
        missing = ""
        try:
            self._load_exit_program()
        except EdgeError as exc:
            missing = f"the last faults of processes that exit between reads are missed: {exc}"
        if missing:
            self.degrade(missing)

    def _load_exit_program(self) -> None:
        if not self.ctx.use_bpf:
            raise EdgeError("eBPF disabled by configuration")
        kernel = self.ctx.kernel()
        kernel.require_hook("sched_process_exit")
        settings = {"ALLOC_EXIT_SIZE": ctypes.sizeof(AllocExitC), "ALLOC_MAX_KEYS": self.max_exits,
                    **{k: kernel.btf.offset(st, m) for k, (st, m) in EXIT_MEMBERS.items()}}
        self._bpf = load_program("alloc_faults", kernel=kernel, settings=settings)
        self._buffers = ((ctypes.c_uint32 * self.max_exits)(), (AllocExitC * self.max_exits)())

    def sample(self, now: float) -> int:
        if self.reads:
            return self.read()
        # The first: exits are kept from now on (the program is attached), and every process
        # alive now is the baseline.
        self._opened_ticks = time.clock_gettime_ns(time.CLOCK_BOOTTIME) * CLOCK_TICKS // 1_000_000_000
        self._seen = {pid: _Seen(st.start, st.faults) for pid, st in self._scan()}
        self._started = time.monotonic()
        self.reads = 1
        return 0

    def close(self) -> None:
        try:
            if self.reads:
                self.read()  # the last partial interval
        finally:
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    # -- reading ----------------------------------------------------------------

    def _scan(self) -> list[tuple[int, _Stat]]:
        found = []
        try:
            names = os.listdir(self.ctx.proc)
        except OSError as exc:
            raise EdgeError(f"cannot list {self.ctx.proc}: {exc}") from exc
        for name in names:
            if name.isdigit() and (st := read_stat(self.ctx.proc / name / "stat")) is not None:
                found.append((int(name), st))
        return found

    def read(self) -> int:
        """End the current interval: read every process, then the exits the kernel kept; emit the
        growth (returns the rows)."""
        end = time.monotonic()
        interval_s, self._started = end - self._started, end
        when = from_unix_seconds(self._clock())
        rows: list[dict[str, Any]] = []
        alive: dict[int, _Seen] = {}
        for pid, st in self._scan():
            prev = self._seen.get(pid)
            same = prev is not None and prev.start == st.start
            base = prev.faults if prev is not None and same else 0
            alive[pid] = _Seen(st.start, st.faults, prev.path if prev and same else None,
                               prev.cgid if prev and same else None)
            if st.faults > base:
                exiting = st.exiting
                path, cgid = (None, None) if exiting else self._memcg_of_pid(pid)
                if path == "/" and not exiting:
                    # The listing read its stat before its cgroup: had it begun to exit in between, a
                    # v1 line says "/" now. The flag is set before the line changes, so a stat read
                    # after the cgroup without it means the "/" was read before: it is the root.
                    again = read_stat(self.ctx.proc / str(pid) / "stat")
                    exiting = again is None or again.start != st.start or again.exiting
                if exiting and self.keeps_exits:
                    # Exiting or exited, not yet reaped: its /proc/PID/cgroup may name the root of a
                    # v1 hierarchy by now. Its exit record, whose cgroup eBPF read before the kernel
                    # moved it out, counts these faults, from the last live read's count carried here
                    # (below if the record is in already, else at a later read).
                    alive[pid].faults = base
                    continue
                if exiting:  # no exit records: where it was last read alive, if it was
                    path, cgid = (prev.path, prev.cgid) if prev is not None and same else (None, None)
                alive[pid].path, alive[pid].cgid = path, cgid
                rows.append(self._row(when, interval_s, pid, st.comm, path, cgid, st.faults - base))
        # Exits after the listing above are drained too: their base is what the listing read.
        for pid, start, memcg_id, name, faults in self._exits():
            # Its last read: this one's (a zombie still listed), else the previous one's, if the
            # pid was this process then (not an earlier or a later one with the same pid).
            prev = next((p for p in (alive.get(pid), self._seen.get(pid)) if p is not None and p.start == start), None)
            if pid in alive and alive[pid].start == start:
                alive[pid] = _Seen(start, faults, alive[pid].path, alive[pid].cgid)  # read again: nothing new
            if prev is not None:
                base = prev.faults
            elif start >= self._opened_ticks:
                base = 0  # started after the last read: every fault of its life is new
            else:
                continue  # alive before this source opened, never read: no baseline
            if faults > base:
                path = self._resolver.path(memcg_id) if self._resolver is not None else None
                if path is None and prev is not None and prev.cgid in (None, memcg_id):
                    path = prev.path  # a cgroup newer than the resolver's last walk: where it was read
                rows.append(self._row(when, interval_s, pid, name, path, memcg_id or None, faults - base))
        self._seen = alive
        for row in rows:
            self.emit("alloc_rate", row)
        self.reads += 1
        if self._bpf is not None:
            self.status.lost = read_counter(self._bpf, "alloc_lost")
        return len(rows)

    @staticmethod
    def _row(when: Any, interval_s: float, pid: int, name: str | None, path: str | None, cgid: int | None,
             pages: int) -> dict[str, Any]:
        return {"time": when, "interval_s": interval_s, "pid": pid, "comm": name, "cgroup_path": path,
                "cgroup_id": cgid, "alloc_bytes": pages * PAGE_SIZE, "alloc_pages": pages}

    @property
    def keeps_exits(self) -> bool:
        """Whether the kernel keeps exited processes' last counts for this source (its eBPF program)."""
        return self._bpf is not None

    def _exits(self) -> list[tuple[int, int, int, str | None, int]]:
        """(pid, starttime in clock ticks, memcg id, comm, faults) of the processes that exited; the map is emptied."""
        if self._bpf is None or self._buffers is None:
            return []
        keys, values = self._buffers
        out: list[tuple[int, int, int, str | None, int]] = []
        for n in map_batches(pins.lookup_and_delete_batch, self._bpf["exits"].map_fd, keys, values,
                             self.max_exits):
            for i in range(n):
                v = values[i]
                out.append((int(keys[i]), v.start_boottime_ns * CLOCK_TICKS // 1_000_000_000, v.memcg_id,
                            comm(v.comm), v.faults))
        return out

    def _memcg_of_pid(self, pid: int) -> tuple[str | None, int | None]:
        """The process's memory cgroup path and id (its directory's inode), now."""
        h = self._hierarchy
        if h is None:
            return None, None
        try:
            path = memcg_of((self.ctx.proc / str(pid) / "cgroup").read_bytes(), h.version)
        except OSError:
            return None, None
        if path is None:
            return None, None
        try:
            return path, os.stat(h.mount / path.lstrip("/")).st_ino
        except OSError:
            return path, None
