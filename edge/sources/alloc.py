"""Page allocations per process and memory cgroup per interval (bpf/alloc.bpf.c).

The kernel counts pages in per-CPU maps on the raw tracepoint
kmem:mm_page_alloc; this source drains them once per interval, double-buffered
(see the comment at the top of bpf/alloc.bpf.c), and writes one alloc_rate row
per (process, memory cgroup) that allocated in the interval. There is never
one event per page.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_unix_us
from pxo.edge import prereqs
from pxo.edge.bpf import PXO_COMM_LEN, SharedStruct, comm, load_program, read_counter, require_tracepoint
from pxo.edge.btf import VMLINUX, Btf, BtfError
from pxo.edge.cgroups import CgroupError, CgroupResolver, memory_hierarchy
from pxo.edge.errors import EdgeError, PrerequisiteError
from pxo.edge.sources.base import Sink, Source

log = logging.getLogger(__name__)

PAGE_SIZE = resource.getpagesize()

ALLOC_RATE = Table(
    "alloc_rate",
    "Page allocations per process and memory cgroup per interval, counted in the kernel on "
    "kmem:mm_page_alloc (every buddy allocation: page faults, page cache, slab, page tables...). "
    "Charged to the task current on the CPU: allocations made in interrupt context (e.g. network "
    "receive buffers) count for whatever task was interrupted. Freed pages are not subtracted.",
    (
        TIME,  # the end of the interval
        Column("interval_s", "DOUBLE", "Length of the interval that ends at time, seconds"),
        Column("pid", "INTEGER", "Process id (thread group id) current at the allocations; 0 is the idle task"),
        Column("comm", "VARCHAR", "Process command name (its main thread's, 15 characters at most)"),
        Column("cgroup_path", "VARCHAR",
               "Memory cgroup of the allocating task (v1 memory hierarchy or v2); NULL if already removed"),
        Column("cgroup_id", "UBIGINT", "Inode number of that memory cgroup's directory"),
        Column("alloc_bytes", "UBIGINT", "Bytes of pages allocated in the interval (alloc_pages x page size)"),
        Column("alloc_pages", "UBIGINT", "Pages allocated in the interval (an order-n allocation counts 2^n)"),
    ),
)

# -- the structs shared with bpf/alloc.h ----------------------------------------


class AllocKeyC(SharedStruct):
    """Mirror of struct alloc_key: keep in sync with bpf/alloc.h."""

    c_header = "alloc.h"
    c_struct = "alloc_key"
    _fields_ = [
        ("memcg_id", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class AllocCommC(SharedStruct):
    """Mirror of struct alloc_comm: keep in sync with bpf/alloc.h."""

    c_header = "alloc.h"
    c_struct = "alloc_comm"
    _fields_ = [("comm", ctypes.c_char * PXO_COMM_LEN)]


@functools.lru_cache(maxsize=4)
def program_offsets(btf_path: Path = VMLINUX) -> dict[str, int]:
    """The offsets this program needs beyond edge/bpf.py's kernel_offsets()."""
    try:
        return {"TASK_GROUP_LEADER": Btf.load(btf_path).offset("task_struct", "group_leader")}
    except BtfError as exc:
        raise PrerequisiteError(f"cannot take struct offsets from BTF: {exc}") from exc


class AllocRateBpfSource(Source):
    """Loads bpf/alloc.bpf.c and drains its counters into alloc_rate rows every ``interval`` seconds."""

    name = "alloc_bpf"
    tables = (ALLOC_RATE,)

    def __init__(self, *, sink: Sink, interval: float = 1.0, grace: float = 0.01, max_keys: int = 4096,
                 btf_path: Path = VMLINUX, proc: Path = Path("/proc"),
                 mountinfo: Path = Path("/proc/self/mountinfo"),
                 resolver: CgroupResolver | None = None, **kwargs: Any) -> None:
        """``interval``: seconds per row; ``grace``: seconds between flipping the
        active map and reading the idle one; ``max_keys``: (process, memory
        cgroup) pairs one interval can hold (each map preallocates
        max_keys x 8 bytes x possible CPUs)."""
        super().__init__(sink=sink, **kwargs)
        if interval <= 0 or grace < 0 or grace >= interval or max_keys < 1:
            raise ValueError("need interval > grace >= 0 and max_keys >= 1")
        self.interval = interval
        self.grace = grace
        self.max_keys = max_keys
        self.drains = 0  # intervals drained so far (tests wait on it)
        self._btf_path = btf_path
        self._proc = proc
        self._mountinfo = mountinfo
        self._resolver = resolver
        self._no_memcg = False  # set once when no memory hierarchy can be found
        self._bpf: Any = None
        self._maps: tuple[Any, Any] = (None, None)
        self._active = 0
        self._started = 0.0  # time.monotonic() at the start of the current interval
        self._next = 0.0  # time.monotonic() at which the current interval ends
        self._ncpu = 0
        self._keys: Any = None
        self._values: Any = None

    # -- lifecycle --------------------------------------------------------------

    def open(self) -> None:
        require_tracepoint("kmem", "mm_page_alloc", field="order")
        rename = prereqs.tracepoint_format("task", "task_rename") or ""
        settings = {
            "ALLOC_KEY_SIZE": ctypes.sizeof(AllocKeyC),
            "ALLOC_MAX_KEYS": self.max_keys,
            # Without it a process keeps the name it had at its first allocation of an interval.
            "HAVE_TASK_RENAME": int(" pid;" in rename and " newcomm[" in rename),
            **program_offsets(self._btf_path),
        }
        self._bpf = load_program("alloc", settings=settings, btf_path=self._btf_path)
        self._maps = (self._bpf["counts_0"], self._bpf["counts_1"])
        self._ncpu = self._maps[0].total_cpu  # possible CPUs: one u64 slot each per entry
        # One buffer for a whole map, reused by every drain.
        self._keys = (AllocKeyC * self.max_keys)()
        self._values = (ctypes.c_uint64 * (self.max_keys * self._ncpu))()
        self._set_active(0)
        self._started = time.monotonic()
        self._next = self._started + self.interval

    def poll(self, timeout: float) -> None:
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            if time.monotonic() < self._next:
                return
        self.drain()

    def close(self) -> None:
        if self._bpf is None:
            return
        try:
            # The last partial interval: stop counting, let running programs
            # finish, then read both maps (the idle one is empty unless an
            # increment landed late).
            self._bpf.detach_raw_tracepoint(tp=b"mm_page_alloc")
            time.sleep(self.grace)
            end = time.monotonic()
            counts = self._take(self._maps[self._active])
            for k, v in self._take(self._maps[1 - self._active]).items():
                counts[k] = counts.get(k, 0) + v
            self._emit_interval(counts, end)
        finally:
            self._bpf.cleanup()
            self._bpf = None

    # -- draining -------------------------------------------------------------

    def _set_active(self, index: int) -> None:
        self._bpf["active"][ctypes.c_int(0)] = ctypes.c_uint32(index)
        self._active = index

    def drain(self) -> None:
        """End the current interval: flip the maps, wait out the grace period, emit the idle map's counts."""
        idle = self._active
        self._set_active(1 - idle)
        end = time.monotonic()
        # Programs that read the old index just before the flip may still be
        # adding to the idle map: they run for microseconds with preemption
        # disabled, so a grace period of milliseconds sees them all finish.
        time.sleep(self.grace)
        self._emit_interval(self._take(self._maps[idle]), end)
        self._next = max(self._next + self.interval, end + self.grace)

    def _emit_interval(self, counts: dict[tuple[int, int], int], end: float) -> None:
        interval_s = end - self._started
        self._started = end
        when = from_unix_us(int((self._clock() - (time.monotonic() - end)) * 1_000_000))
        for (tgid, memcg_id), pages in counts.items():
            self.emit("alloc_rate", {
                "time": when,
                "interval_s": interval_s,
                "pid": tgid,
                "comm": self._comm(tgid),
                "cgroup_path": self._cgroup_path(memcg_id),
                "cgroup_id": memcg_id or None,
                "alloc_bytes": pages * PAGE_SIZE,
                "alloc_pages": pages,
            })
        self.drains += 1
        self.status.lost = read_counter(self._bpf, "alloc_lost")

    def _take(self, table: Any) -> dict[tuple[int, int], int]:
        """Read and delete every entry of an idle map: {(tgid, memcg id): pages summed over CPUs}."""
        counts: dict[tuple[int, int], int] = {}
        for tgid, memcg_id, pages in self._lookup_and_delete_all(table.map_fd):
            key = (tgid, memcg_id)
            counts[key] = counts.get(key, 0) + pages
        return counts

    def _lookup_and_delete_all(self, fd: int) -> Iterator[tuple[int, int, int]]:
        """BPF_MAP_LOOKUP_AND_DELETE_BATCH over a whole per-CPU hash, one bucket run per syscall.

        (bcc's own items_lookup_and_delete_batch shares one integer between
        the batch cursor and the count in bcc 0.26, so it is not used.)
        """
        from bcc.libbcc import lib  # heavy, and only the edge needs it

        keys, values, ncpu = self._keys, self._values, self._ncpu
        in_batch, out_batch, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
        first = True
        while True:
            count.value = self.max_keys
            res = lib.bpf_lookup_and_delete_batch(
                fd, None if first else ctypes.byref(in_batch), ctypes.byref(out_batch),
                ctypes.byref(keys), ctypes.byref(values), ctypes.byref(count))
            err = ctypes.get_errno()
            for i in range(count.value):
                k = keys[i]
                yield k.tgid, k.memcg_id, sum(values[i * ncpu:(i + 1) * ncpu])
            if res != 0:
                if err == errno.ENOENT:  # the whole map has been read
                    return
                raise EdgeError(f"cannot drain the alloc_rate counters: {errno.errorcode.get(err, err)}")
            in_batch.value = out_batch.value
            first = False

    # -- enrichment -------------------------------------------------------------

    def _comm(self, tgid: int) -> str | None:
        """From the kernel's comm map; /proc when the LRU map evicted it (then None once the process is gone)."""
        try:
            return comm(self._bpf["comms"][ctypes.c_uint32(tgid)].comm)
        except KeyError:
            pass
        try:
            return (self._proc / str(tgid) / "comm").read_text().rstrip("\n")
        except OSError:
            return None

    def _cgroup_path(self, memcg_id: int) -> str | None:
        if self._resolver is None and not self._no_memcg:
            try:
                self._resolver = CgroupResolver(memory_hierarchy(self._mountinfo))
            except (CgroupError, OSError) as exc:
                log.warning("alloc_rate: memory cgroup paths off (%s); cgroup_id only", exc)
                self._no_memcg = True
        return self._resolver.path(memcg_id) if self._resolver is not None else None
