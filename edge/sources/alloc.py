"""Page allocations per process and memory cgroup per interval, exactly (bpf/alloc.bpf.c):
the opt-in source alloc_bpf. The edge's default source of the same table,
alloc_faults (edge/sources/alloc_faults.py), reads the page faults the kernel
already counts instead, at no cost per page.

The kernel counts pages in per-CPU maps on the raw tracepoint
kmem:mm_page_alloc; this source drains them once per interval, double-buffered
(see the comment at the top of bpf/alloc.bpf.c), and writes one alloc_rate row
per (process, memory cgroup) that allocated in the interval. There is never
one event per page, but there is one program run per allocation: a few percent
of a page-fault-bound workload's CPU (bench/overhead.py, docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_unix_seconds
from pxo.edge import pins
from pxo.edge.bpf import PXO_COMM_LEN, SharedStruct, comm, load_program, read_counter
from pxo.edge.cgroups import CgroupError, CgroupResolver, memory_hierarchy
from pxo.edge.errors import EdgeError, PrerequisiteError
from pxo.edge.sources.base import Source, SourceContext

log = logging.getLogger(__name__)

PAGE_SIZE = resource.getpagesize()
# errno of a batch operation the kernel lacks for a map type: ENOTSUPP (524, kernel-internal), EOPNOTSUPP, EINVAL
_NO_BATCH = (524, errno.EOPNOTSUPP, errno.EINVAL)

ALLOC_RATE = Table(
    "alloc_rate",
    "Page allocations per process and memory cgroup per interval. By default (source alloc_faults) "
    "the page faults the kernel counts per process (/proc/PID/stat minflt + majflt, and at exit), one "
    "page each: anonymous memory, copy-on-write, file mappings; not page cache filled by read(), slab "
    "or page tables; a huge page fault counts one page; a fault that maps a page already in memory "
    "counts too. The cgroup is the process's at the end of the interval (or at its exit). The opt-in "
    "source alloc_bpf counts every buddy allocation exactly on kmem:mm_page_alloc (page faults, page "
    "cache, slab, page tables...), at a cost per page, charged to the task current on the CPU "
    "(allocations in interrupt context count for whatever task was interrupted). Freed pages are "
    "not subtracted.",
    (
        TIME,  # the end of the interval
        Column("interval_s", "DOUBLE", "Length of the interval that ends at time, seconds"),
        Column("pid", "INTEGER", "Process id (thread group id) current at the allocations; 0 is the idle task"),
        Column("comm", "VARCHAR", "Process command name: its main thread's, the latest seen (15 characters at most)"),
        Column("cgroup_path", "VARCHAR",
               "Memory cgroup of the allocating task (v1 memory hierarchy or v2); NULL if already removed"),
        Column("cgroup_id", "UBIGINT", "Inode number of that memory cgroup's directory"),
        Column("alloc_bytes", "UBIGINT", "Bytes of pages allocated in the interval (alloc_pages x page size)"),
        Column("alloc_pages", "UBIGINT", "Pages allocated in the interval (alloc_faults: page faults; "
               "alloc_bpf: an order-n allocation counts 2^n)"),
    ),
)

# -- the structs shared with bpf/alloc.h ----------------------------------------


class AllocSlotC(SharedStruct):
    """Mirror of struct alloc_slot: keep in sync with bpf/alloc.h."""

    c_header = "alloc.h"
    c_struct = "alloc_slot"
    _fields_ = [
        ("gen", ctypes.c_uint64),
        ("memcg_id", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("pages", ctypes.c_uint64),
    ]


# Where each field of a slot is, in 64-bit words, for reading a batch of them
# without a Python object per slot (tgid is the low half of its word: x86_64
# and arm64 are little-endian).
_SLOT_WORDS = ctypes.sizeof(AllocSlotC) // 8
_W_GEN, _W_MEMCG, _W_TGID, _W_PAGES = (getattr(AllocSlotC, f).offset // 8 for f in ("gen", "memcg_id", "tgid", "pages"))


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


def map_batches(op: Any, fd: int, keys: Any, values: Any, capacity: int) -> Iterator[int]:
    """Run a BPF_MAP_*_BATCH operation over a whole map; yields how many
    entries each call put at the start of keys and values.

    (bcc's own items_*_batch share one integer between the batch cursor
    and the count in bcc 0.26, so they are not used.)
    """
    in_batch, out_batch, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
    first = True
    while True:
        count.value = capacity
        res = op(fd, None if first else ctypes.byref(in_batch), ctypes.byref(out_batch),
                 ctypes.byref(keys), ctypes.byref(values), ctypes.byref(count))
        err = ctypes.get_errno()
        if count.value:
            yield count.value
        if res != 0:
            if err == errno.ENOENT:  # the whole map has been read
                return
            raise EdgeError(f"cannot drain the alloc_rate maps: {errno.errorcode.get(err, err)}")
        in_batch.value = out_batch.value
        first = False


class AllocRateBpfSource(Source):
    """Loads bpf/alloc.bpf.c and drains its counters into alloc_rate rows every ``interval`` seconds."""

    name = "alloc_bpf"
    tables = (ALLOC_RATE,)

    def __init__(self, ctx: SourceContext, *, interval: float = 1.0, grace: float = 0.01, slots: int = 512,
                 max_keys: int = 4096, resolver: CgroupResolver | None = None, array_batch: bool = True) -> None:
        """``interval``: seconds per row; ``grace``: seconds between ending an
        interval and reading its maps; ``slots`` (a power of two): per-CPU
        counting slots, and ``max_keys``: (process, memory cgroup) pairs the
        overflow hash holds per interval (see bpf/alloc.bpf.c; each of the two
        generations preallocates slots x 32 + max_keys x 8 bytes per possible CPU);
        ``array_batch``: read the slots with one batch call (False: slot by slot, as on
        kernels before 5.11, which it falls back to by itself)."""
        super().__init__(ctx)
        if interval <= 0 or grace < 0 or grace >= interval:
            raise ValueError("need interval > grace >= 0")
        if slots < 1 or slots & (slots - 1) or max_keys < 1:
            raise ValueError("slots must be a power of two and max_keys at least 1")
        self.interval = interval
        self.grace = grace
        self.slots = slots
        self.max_keys = max_keys
        self.drains = 0  # intervals drained so far (tests wait on it)
        self._resolver = resolver
        self._no_memcg = False  # set once when no memory hierarchy can be found
        self._bpf: Any = None
        self._gen = 0  # the generation the kernel counts into now
        self._started = 0.0  # time.monotonic() at the start of the current interval
        self._next = 0.0  # time.monotonic() at which the current interval ends
        self._ncpu = 0
        self._buffers: dict[str, Any] = {}
        self._array_batch = array_batch  # BPF_MAP_LOOKUP_BATCH works on per-CPU arrays (not before 5.11)

    # -- lifecycle --------------------------------------------------------------

    def open(self) -> None:
        if not self.ctx.use_bpf:
            raise PrerequisiteError("eBPF disabled by configuration")
        kernel = self.ctx.kernel()
        kernel.require_hook("mm_page_alloc", ("struct page *", "unsigned int", "gfp_t", "int"))
        settings = {
            "ALLOC_SLOT_SIZE": ctypes.sizeof(AllocSlotC),
            "ALLOC_KEY_SIZE": ctypes.sizeof(AllocKeyC),
            "ALLOC_SLOTS": self.slots,
            "ALLOC_MAX_KEYS": self.max_keys,
            # Without it a process keeps the name it had at its first allocation of an interval.
            "HAVE_TASK_RENAME": int(kernel.hook("task_rename") == ("struct task_struct *", "const char *")),
            # Before 5.11: no BTF-typed current task; the same loads through bpf_probe_read_kernel()
            "HAVE_TASK_BTF": int(kernel.has_helper("get_current_task_btf")),
        }
        self._bpf = load_program("alloc", kernel=kernel, settings=settings)
        self._ncpu = self._bpf["counts_0"].total_cpu  # possible CPUs: one value each per entry
        # One buffer per map shape, reused by every drain.
        self._buffers = {
            "slot_keys": (ctypes.c_uint32 * self.slots)(),
            "slots": (AllocSlotC * (self.slots * self._ncpu))(),
            "hash_keys": (AllocKeyC * self.max_keys)(),
            "hash_values": (ctypes.c_uint64 * (self.max_keys * self._ncpu))(),
        }
        self._set_gen(2)  # not 0: zeroed slots (generation 0) must read as free
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
            # finish, then read it as any other.
            self._bpf.detach_raw_tracepoint(tp=b"mm_page_alloc")
            end = time.monotonic()
            time.sleep(self.grace)
            self._emit_interval(self._take(self._gen), end)
        finally:
            self._bpf.cleanup()
            self._bpf = None

    # -- draining -------------------------------------------------------------

    def _set_gen(self, gen: int) -> None:
        self._bpf["active"][ctypes.c_int(0)] = ctypes.c_uint64(gen)
        self._gen = gen

    def drain(self) -> None:
        """End the current interval: switch generations, wait out the grace period, emit the old one's counts."""
        gen = self._gen
        self._set_gen(gen + 1)
        end = time.monotonic()
        # Programs that read the old generation just before the switch may
        # still be adding to its maps: they run for well under a microsecond
        # with preemption disabled, so a grace period of milliseconds sees
        # them all finish.
        time.sleep(self.grace)
        self._emit_interval(self._take(gen), end)
        self._next = max(self._next + self.interval, end + self.grace)

    def _emit_interval(self, counts: dict[tuple[int, int], int], end: float) -> None:
        interval_s = end - self._started
        self._started = end
        when = from_unix_seconds(self._clock() - (time.monotonic() - end))
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

    def _take(self, gen: int) -> dict[tuple[int, int], int]:
        """Generation gen's counts, {(tgid, memcg id): pages} summed over CPUs; its hash is emptied."""
        counts: dict[tuple[int, int], int] = defaultdict(int)
        b, ncpu = self._buffers, self._ncpu
        # Half gen & 1 of the slots, ncpu per index; a slot of another generation is free.
        words = memoryview(b["slots"]).cast("B").cast("Q")
        n = self._read_half(gen & 1) * ncpu
        for i, g in enumerate(words[_W_GEN:n * _SLOT_WORDS:_SLOT_WORDS].tolist()):
            at = i * _SLOT_WORDS
            if g == gen and words[at + _W_PAGES]:
                counts[(words[at + _W_TGID] & 0xFFFFFFFF, words[at + _W_MEMCG])] += words[at + _W_PAGES]
        keys, values = b["hash_keys"], b["hash_values"]
        for n in map_batches(pins.lookup_and_delete_batch, self._bpf[f"counts_{gen & 1}"].map_fd,
                             keys, values, self.max_keys):
            for i in range(n):
                counts[(keys[i].tgid, keys[i].memcg_id)] += sum(values[i * ncpu:(i + 1) * ncpu])
        return counts

    def _read_half(self, half: int) -> int:
        """BPF_MAP_LOOKUP_BATCH of one half of the slots array into the slot buffers; returns the entries read."""
        b = self._buffers
        if not self._array_batch:
            return self._read_half_one_by_one(half)
        # An array's batch cursor is the last index read: the half starts after it.
        cursor, out, count = ctypes.c_uint32(half * self.slots - 1), ctypes.c_uint32(0), ctypes.c_uint32(self.slots)
        res = pins.lookup_batch(self._bpf["slots"].map_fd, ctypes.byref(cursor) if half else None,
                                   ctypes.byref(out), ctypes.byref(b["slot_keys"]), ctypes.byref(b["slots"]),
                                   ctypes.byref(count))
        err = ctypes.get_errno()
        if res != 0 and err in _NO_BATCH:  # per-CPU arrays gained batch reads after 5.10
            log.info("alloc_rate: this kernel cannot batch-read per-CPU arrays; reading slot by slot")
            self._array_batch = False
            return self._read_half_one_by_one(half)
        if res != 0 and err != errno.ENOENT:
            raise EdgeError(f"cannot read the alloc_rate counters: {errno.errorcode.get(err, err)}")
        if count.value != self.slots:
            raise EdgeError(f"cannot read the alloc_rate counters: {count.value} of {self.slots} slots read")
        return count.value

    def _read_half_one_by_one(self, half: int) -> int:
        """The same as one batch read, one BPF_MAP_LOOKUP_ELEM per slot (each fills ncpu values)."""
        fd, buf, step = self._bpf["slots"].map_fd, self._buffers["slots"], ctypes.sizeof(AllocSlotC) * self._ncpu
        key = ctypes.c_uint32(0)
        for i in range(self.slots):
            key.value = half * self.slots + i
            if pins.lookup_elem(fd, ctypes.byref(key), ctypes.byref(buf, i * step)) != 0:
                err = ctypes.get_errno()
                raise EdgeError(f"cannot read the alloc_rate counters: {errno.errorcode.get(err, err)}")
        return self.slots

    # -- enrichment -------------------------------------------------------------

    def _comm(self, tgid: int) -> str | None:
        """From the kernel's comm map; /proc when the LRU map evicted it (then None once the process is gone)."""
        try:
            return comm(self._bpf["comms"][ctypes.c_uint32(tgid)].comm)
        except KeyError:
            pass
        try:
            return (self.ctx.proc / str(tgid) / "comm").read_bytes().rstrip(b"\n").decode(errors="replace")
        except OSError:
            return None

    def _cgroup_path(self, memcg_id: int) -> str | None:
        if self._resolver is None and not self._no_memcg:
            try:
                self._resolver = CgroupResolver(memory_hierarchy(self.ctx.mountinfo))
            except (CgroupError, OSError) as exc:
                log.warning("alloc_rate: memory cgroup paths off (%s); cgroup_id only", exc)
                self._no_memcg = True
        return self._resolver.path(memcg_id) if self._resolver is not None else None
