"""Per-cgroup memory state sampled from cgroupfs (no eBPF): the container_memory table.

Every ``period`` seconds the memory hierarchy is walked breadth-first from its
root, so that the top levels (slices, pods) are kept when a node has more
cgroups than ``max_cgroups``, and one row per cgroup is emitted. Both layouts
are read into the same columns:

=====================  ====================================  ==========================================
column                 cgroup v1 (memory hierarchy)          cgroup v2 (unified, memory enabled)
=====================  ====================================  ==========================================
usage_bytes            memory.usage_in_bytes                 memory.current (absent on the root)
limit_bytes            memory.limit_in_bytes (huge = NULL)   memory.max ('max' = NULL)
peak_bytes             memory.max_usage_in_bytes             memory.peak (Linux 5.19+)
high_bytes             NULL                                  memory.high ('max' = NULL)
swap_limit_bytes       memsw.limit_in_bytes minus limit      memory.swap.max ('max' = NULL)
anon_bytes             memory.stat total_rss                 memory.stat anon
file_bytes             memory.stat total_cache               memory.stat file
shmem_bytes            memory.stat total_shmem               memory.stat shmem
swap_bytes             memory.stat total_swap (else memsw    memory.swap.current
                       usage minus usage)
working_set_bytes      usage - total_inactive_file           usage - inactive_file
events_*               NULL                                  memory.events (hierarchical)
events_local_*         NULL                                  memory.events.local (this cgroup's own)
failcnt                memory.failcnt                        NULL (v2's equivalent is events_max)
under_oom              memory.oom_control under_oom          NULL
events_oom_kill        memory.oom_control oom_kill           memory.events oom_kill
psi_*                  memory.pressure if the kernel has it  memory.pressure
=====================  ====================================  ==========================================

working_set_bytes is cAdvisor's ``container_memory_working_set_bytes`` (the
number the kubelet evicts on): usage minus inactive file pages, floored at 0,
i.e. what the kernel could not reclaim cheaply. All v1 counters used here are
hierarchical (``total_*``, and usage since use_hierarchy is always 1 on modern
kernels); v2's ``memory.current``, ``memory.stat`` and ``memory.events`` are
too. v1's usage_in_bytes is the fuzzy, per-CPU batched page counter, as cAdvisor
reports it.

Cost: a sample is one ``getdents`` per cgroup directory (the directory's inode,
the cgroup id, comes from the directory entry: no stat) and, per cgroup, an
``O_PATH`` open of the directory plus about seven small reads relative to it,
each one openat + read + close into one reused buffer. An optional file the
kernel lacks (memory.peak before 5.19, memsw without swap accounting,
memory.pressure on v1) is remembered as absent and not asked for again, once a
cgroup missed it twice in a row (``MemcgReader._get`` says why not once).

On cgroup v2 a cgroup whose parent does not enable the memory controller in its
``cgroup.subtree_control`` has no memory files: its pages are charged to the
nearest ancestor that has them, and it has no row of its own.

``read_memcg`` reads one cgroup the same way; the edge calls it at OOM-kill
time to record the memcg's state at the kill.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_unix_seconds
from pxo.edge.cgroups import Hierarchy, memory_hierarchy
from pxo.edge.errors import EdgeError
from pxo.edge.sources.base import SamplingSource, SourceContext

log = logging.getLogger(__name__)

CONTAINER_MEMORY = Table(
    "container_memory",
    "Memory state of every memory cgroup (container, pod, slice), sampled from cgroupfs every period. On "
    "cgroup v2 a cgroup whose parent does not enable the memory controller has no row: its memory is "
    "charged to the nearest ancestor that has a row.",
    (
        TIME,
        Column("cgroup_path", "VARCHAR", "Memory cgroup, as the kernel names it ('/' is the root)"),
        Column("cgroup_id", "UBIGINT", "Inode number of the cgroup directory (the kernel's cgroup id)"),
        Column("hierarchy", "VARCHAR", "'v1' (memory hierarchy) or 'v2' (unified hierarchy)"),
        Column("usage_bytes", "UBIGINT", "Memory charged to the cgroup and its descendants, bytes"),
        Column("limit_bytes", "UBIGINT", "Hard limit (v1 limit_in_bytes, v2 memory.max), bytes; NULL if unlimited"),
        Column("peak_bytes", "UBIGINT", "Highest usage recorded (v1 max_usage_in_bytes, v2 memory.peak from "
                                        "Linux 5.19), bytes"),
        Column("high_bytes", "UBIGINT", "v2 memory.high, the throttling limit, bytes; NULL if none (or v1)"),
        Column("swap_limit_bytes", "UBIGINT",
               "Swap the cgroup may use (v2 memory.swap.max, v1 memsw limit minus limit), bytes; NULL if unlimited"),
        Column("anon_bytes", "UBIGINT", "Anonymous memory (v1 total_rss, v2 anon), bytes"),
        Column("file_bytes", "UBIGINT", "Page cache incl. tmpfs/shmem (v1 total_cache, v2 file), bytes"),
        Column("shmem_bytes", "UBIGINT", "tmpfs and shared memory, part of file_bytes (v1 total_shmem, v2 shmem), "
                                         "bytes: page cache that cannot be reclaimed without swap"),
        Column("swap_bytes", "UBIGINT", "Swap used (v1 total_swap, v2 memory.swap.current), bytes"),
        Column("working_set_bytes", "UBIGINT",
               "cAdvisor's working set: usage minus inactive file pages (floored at 0), bytes"),
        Column("events_low", "UBIGINT", "v2 memory.events low: reclaimed below memory.low"),
        Column("events_high", "UBIGINT", "v2 memory.events high: throttled above memory.high"),
        Column("events_max", "UBIGINT", "v2 memory.events max: usage about to exceed memory.max"),
        Column("events_oom", "UBIGINT", "v2 memory.events oom: allocations that hit the limit and were about to fail"),
        Column("events_oom_kill", "UBIGINT", "Processes killed by an OOM killer in this cgroup (v1 oom_control)"),
        Column("events_oom_group_kill", "UBIGINT", "v2 memory.events oom_group_kill: whole-group kills (5.17+)"),
        Column("events_local_max", "UBIGINT", "v2 memory.events.local max: this cgroup's own limit, not a child's"),
        Column("events_local_oom", "UBIGINT",
               "v2 memory.events.local oom: times this cgroup's own limit invoked the OOM killer"),
        Column("events_local_oom_kill", "UBIGINT",
               "v2 memory.events.local oom_kill: OOM kills of this cgroup's own tasks, not its children's"),
        Column("failcnt", "UBIGINT", "v1 memory.failcnt: times usage hit the limit (v2: see events_max)"),
        Column("under_oom", "BOOLEAN", "v1 memory.oom_control under_oom: the cgroup is in OOM right now"),
        Column("psi_some_avg10", "DOUBLE", "memory.pressure: % of the last 10 s some task stalled on memory"),
        Column("psi_full_avg10", "DOUBLE", "memory.pressure: % of the last 10 s all tasks stalled on memory"),
        Column("psi_some_total_us", "UBIGINT", "memory.pressure: total time some task stalled, microseconds"),
        Column("psi_full_total_us", "UBIGINT", "memory.pressure: total time all tasks stalled, microseconds"),
    ),
)

# v1 prints "no limit" as PAGE_COUNTER_MAX in bytes: LONG_MAX rounded down to a
# page (9223372036854771712 with 4 KiB pages, other values with 16/64 KiB
# pages), and kernels before 3.19 printed ULLONG_MAX. No real limit is near
# 2**62 bytes (4 EiB), so anything from there up means unlimited.
V1_UNLIMITED = 1 << 62


# -- reading small kernel files ------------------------------------------------


class SmallFileReader:
    """Reads small kernel text files (cgroupfs, procfs) through one reused buffer.

    Three syscalls per file: openat, read, close (``Path.read_text`` adds an
    fstat, an ioctl, an lseek and a second read, and a new buffer each time).
    Both filesystems serve these files through seq_file, which fills a read up
    to the size asked for, so a short read is the end of the file; when the
    buffer fills, the rest is read and the buffer grows for next time.
    Not thread-safe: one reader per thread.
    """

    def __init__(self, size: int = 16384) -> None:
        self._buf = bytearray(size)

    def read(self, name: str, dir_fd: int | None = None) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            n = os.readv(fd, (self._buf,))
            if n < len(self._buf):
                return bytes(memoryview(self._buf)[:n])
            parts = [bytes(self._buf)]
            while part := os.read(fd, len(self._buf)):
                parts.append(part)
            self._buf = bytearray(2 * len(self._buf))
            return b"".join(parts)
        finally:
            os.close(fd)


def flat_keyed(data: bytes) -> dict[bytes, bytes]:
    """'key value' lines (memory.stat, memory.events, memory.oom_control) -> {key: value}."""
    tokens = data.split()
    return dict(zip(tokens[::2], tokens[1::2], strict=False))


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)


def _v1_limit(data: bytes | None) -> int | None:
    if data is None:
        return None
    value = int(data)
    return None if value >= V1_UNLIMITED else value


def _v2_limit(data: bytes | None) -> int | None:
    if data is None:
        return None
    data = data.strip()
    return None if data == b"max" else int(data)


def parse_psi(data: bytes) -> dict[str, Any]:
    """memory.pressure ("some avg10=0.00 avg60=0.00 avg300=0.00 total=6839" and a "full"
    line) -> the psi_* columns. total is in microseconds."""
    out: dict[str, Any] = {}
    for line in data.splitlines():
        kind, *fields = line.split()
        if kind not in (b"some", b"full"):
            continue
        k = kind.decode()
        for f in fields:
            key, _, value = f.partition(b"=")
            if key == b"avg10":
                out[f"psi_{k}_avg10"] = float(value)
            elif key == b"total":
                out[f"psi_{k}_total_us"] = int(value)
    return out


# -- one cgroup -----------------------------------------------------------------


class _Gone(Exception):
    """The cgroup was removed while it was being read (or has no memory controller)."""


class _Cgroup(NamedTuple):
    """The cgroup a MemcgReader is reading: its directory (open, and its name) and id."""

    dfd: int
    directory: str
    root: bool
    cgroup_id: int


_EMPTY_ROW: dict[str, Any] = {c.name: None for c in CONTAINER_MEMORY.columns if c.name != "time"}


class MemcgReader:
    """Reads container_memory rows for cgroups of one hierarchy, reusing one buffer
    and remembering which optional files this kernel does not have. One per thread."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self._io = SmallFileReader()
        self._absent: set[str] = set()
        self._absent_at_root: set[str] = set()
        self._missed_by: dict[str, set[int]] = {}  # file -> the cgroups that missed it since one had it
        self._mount = str(hierarchy.mount).rstrip("/") or "/"

    def dir_of(self, path: str) -> str:
        return self._mount if path == "/" else self._mount + path

    def read(self, path: str, *, directory: str | None = None, cgroup_id: int | None = None) -> dict[str, Any] | None:
        """One row (without time) for the cgroup at ``path``; None if it is gone, or
        (cgroup v2) if its parent does not give it the memory controller."""
        directory = directory or self.dir_of(path)
        try:
            dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            if cgroup_id is None:
                cgroup_id = os.fstat(dfd).st_ino
            row = dict(_EMPTY_ROW, cgroup_path=path, cgroup_id=cgroup_id)
            read = self._read_v1 if self.hierarchy.version == 1 else self._read_v2
            inactive = read(_Cgroup(dfd, directory, path == "/", cgroup_id), row)
        except _Gone:
            return None
        finally:
            os.close(dfd)
        usage = row["usage_bytes"]
        if usage is not None and inactive is not None:
            row["working_set_bytes"] = max(0, usage - inactive)  # cAdvisor floors it at 0 too
        return row

    def _get(self, cg: _Cgroup, name: str, *, required: bool = False) -> bytes | None:
        """A file's bytes; None if this cgroup does not have it. ``required``: every
        memory cgroup but the root has it, so a cgroup without it has no row.

        A file the kernel lacks (memory.peak before 5.19, memsw without swap
        accounting, memory.pressure on v1) is asked for no more once the same cgroup
        missed it at two reads in a row, no cgroup having had it in between; the
        root keeps its own list, since it lacks v2's per-cgroup files. One cgroup's
        miss says nothing of the others: a cgroup being removed loses its files one
        by one before its directory goes (reading one then fails with ENODEV, or
        opening it with ENOENT), and one whose memory controller is being switched
        on gets them a group at a time (memory.swap.* after memory.max). Taking
        either for the kernel's answer once left a node's anon_bytes, or its
        swap_limit_bytes, NULL for good.
        """
        absent = self._absent_at_root if cg.root else self._absent
        if name in absent:
            return None
        try:
            data = self._io.read(name, cg.dfd)
        except FileNotFoundError:
            if not os.path.isdir(cg.directory):
                raise _Gone from None
            if required and not cg.root:
                raise _Gone from None  # being removed, or (v2) its parent keeps the memory controller
            if cg.root:
                absent.add(name)
                return None
            missed_by = self._missed_by.setdefault(name, set())
            if cg.cgroup_id in missed_by:
                absent.add(name)
                del self._missed_by[name]
            else:
                missed_by.add(cg.cgroup_id)
            return None
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # removed since it was opened: the cgroup is going
                raise _Gone from None
            if exc.errno == errno.EOPNOTSUPP:  # PSI switched off on the kernel command line
                absent.add(name)
                return None
            raise
        self._missed_by.pop(name, None)
        return data

    # Each fills the row and returns the inactive file bytes (for the working set).

    def _read_v1(self, cg: _Cgroup, row: dict[str, Any]) -> int | None:
        row["hierarchy"] = "v1"
        usage = _int(self._get(cg, "memory.usage_in_bytes", required=True))
        row["usage_bytes"] = usage
        row["limit_bytes"] = _v1_limit(self._get(cg, "memory.limit_in_bytes"))
        row["peak_bytes"] = _int(self._get(cg, "memory.max_usage_in_bytes"))
        stat = flat_keyed(self._get(cg, "memory.stat") or b"")
        row["anon_bytes"] = _int(stat.get(b"total_rss"))
        row["file_bytes"] = _int(stat.get(b"total_cache"))
        swap = _int(stat.get(b"total_swap"))  # present when swap accounting is on
        if swap is None and usage is not None:
            memsw = _int(self._get(cg, "memory.memsw.usage_in_bytes"))
            swap = None if memsw is None else max(0, memsw - usage)
        row["swap_bytes"] = swap
        row["shmem_bytes"] = _int(stat.get(b"total_shmem"))
        memsw_limit = _v1_limit(self._get(cg, "memory.memsw.limit_in_bytes"))
        limit = row["limit_bytes"]
        row["swap_limit_bytes"] = None if memsw_limit is None or limit is None else max(0, memsw_limit - limit)
        row["failcnt"] = _int(self._get(cg, "memory.failcnt"))
        oom = flat_keyed(self._get(cg, "memory.oom_control") or b"")
        row["events_oom_kill"] = _int(oom.get(b"oom_kill"))
        under = oom.get(b"under_oom")
        row["under_oom"] = None if under is None else under != b"0"
        psi = self._get(cg, "memory.pressure")  # only with cgroup v1 PSI support
        if psi is not None:
            row.update(parse_psi(psi))
        return _int(stat.get(b"total_inactive_file"))

    def _read_v2(self, cg: _Cgroup, row: dict[str, Any]) -> int | None:
        row["hierarchy"] = "v2"
        row["usage_bytes"] = _int(self._get(cg, "memory.current", required=True))
        row["limit_bytes"] = _v2_limit(self._get(cg, "memory.max"))
        row["peak_bytes"] = _int(self._get(cg, "memory.peak"))
        row["high_bytes"] = _v2_limit(self._get(cg, "memory.high"))
        row["swap_bytes"] = _int(self._get(cg, "memory.swap.current"))
        row["swap_limit_bytes"] = _v2_limit(self._get(cg, "memory.swap.max"))
        stat = flat_keyed(self._get(cg, "memory.stat") or b"")
        row["anon_bytes"] = _int(stat.get(b"anon"))
        row["file_bytes"] = _int(stat.get(b"file"))
        row["shmem_bytes"] = _int(stat.get(b"shmem"))
        events = self._get(cg, "memory.events")
        if events is not None:
            ev = flat_keyed(events)
            for key in ("low", "high", "max", "oom", "oom_kill", "oom_group_kill"):
                row[f"events_{key}"] = _int(ev.get(key.encode()))
        local = self._get(cg, "memory.events.local")
        if local is not None:
            ev = flat_keyed(local)
            for key in ("max", "oom", "oom_kill"):
                row[f"events_local_{key}"] = _int(ev.get(key.encode()))
        psi = self._get(cg, "memory.pressure")
        if psi is not None:
            row.update(parse_psi(psi))
        return _int(stat.get(b"inactive_file"))


def read_memcg(hierarchy: Hierarchy, path: str) -> dict[str, object] | None:
    """The container_memory columns (all but time, which the caller stamps) of the
    cgroup at ``path`` in ``hierarchy`` (as /proc/PID/cgroup names it), or None if
    the cgroup is gone. Thread-safe: each call has its own buffer."""
    return MemcgReader(hierarchy).read(path)


# -- walking a hierarchy ---------------------------------------------------------


def walk_cgroups(hierarchy: Hierarchy, max_cgroups: int) -> tuple[list[tuple[str, str, int]], bool]:
    """(cgroup path, directory, cgroup id) of up to ``max_cgroups`` cgroups,
    breadth-first from the root, so parents come before their children; and
    whether cgroups were left out. Cgroups removed during the walk are skipped."""
    mount = str(hierarchy.mount).rstrip("/") or "/"
    found: list[tuple[str, str, int]] = [("/", mount, os.stat(mount).st_ino)]
    todo: deque[tuple[str, str]] = deque([("", mount)])
    while todo:
        prefix, directory = todo.popleft()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            # d_type and d_ino come with the directory entry: no stat per
            # cgroup. kernfs reports the node's id as d_ino, the same number as
            # the directory's st_ino and the kernel's cgroup id.
            children = sorted((e.name, e.path, e.inode()) for e in entries if e.is_dir(follow_symlinks=False))
        for name, child, cgroup_id in children:  # sorted: a capped walk keeps the same cgroups
            if len(found) >= max_cgroups:
                return found, True
            path = f"{prefix}/{name}"
            found.append((path, child, cgroup_id))
            todo.append((path, child))
    return found, False


# -- the periodic lifecycle -------------------------------------------------------


class ContainerMemorySource(SamplingSource):
    """Samples every memory cgroup (up to ``max_cgroups``) into container_memory."""

    name = "cgroupfs"
    tables = (CONTAINER_MEMORY,)

    def __init__(self, ctx: SourceContext, *, hierarchy: Hierarchy | None = None, period: float = 10.0,
                 max_cgroups: int = 5000) -> None:
        if max_cgroups < 1:
            raise ValueError(f"max_cgroups must be at least 1, not {max_cgroups!r}")
        super().__init__(ctx, period=period)
        self.hierarchy = hierarchy
        self.max_cgroups = max_cgroups
        self._reader: MemcgReader | None = None

    def open(self) -> None:
        self.hierarchy = self.hierarchy or resolve_memory_hierarchy(self.ctx.mountinfo)
        check_readable(self.hierarchy)
        self._reader = MemcgReader(self.hierarchy)

    def sample(self, now: float) -> int:
        assert self._reader is not None and self.hierarchy is not None, "sample() before open()"
        started = time.perf_counter()
        cgroups, capped = walk_cgroups(self.hierarchy, self.max_cgroups)
        stamp = from_unix_seconds(now)
        rows = 0
        for path, directory, cgroup_id in cgroups:
            row = self._reader.read(path, directory=directory, cgroup_id=cgroup_id)
            if row is None:
                continue  # removed since the walk
            row["time"] = stamp
            self.emit(CONTAINER_MEMORY.name, row)
            rows += 1
        took = (time.perf_counter() - started) * 1000
        self.status.detail = (
            f"capped: sampled the first {self.max_cgroups} cgroups (breadth-first) of {self.hierarchy.mount}; "
            f"raise max_cgroups to see the rest ({took:.0f} ms)" if capped
            else f"{rows} cgroups in {took:.1f} ms")
        return rows


def resolve_memory_hierarchy(mountinfo: Path) -> Hierarchy:
    """memory_hierarchy() with its failures as one EdgeError sentence."""
    try:
        return memory_hierarchy(mountinfo)
    except OSError as exc:
        raise EdgeError(f"cannot find the memory cgroup hierarchy: cannot read {mountinfo}: "
                        f"{exc.strerror or exc}") from exc


def check_readable(h: Hierarchy) -> None:
    try:
        with os.scandir(h.mount):
            pass
    except OSError as exc:
        raise EdgeError(f"cannot read the memory cgroup hierarchy at {h.mount}: {exc.strerror or exc}") from exc
