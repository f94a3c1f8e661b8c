"""Per-process memory sampled from /proc (no eBPF): the process_memory table.

In the spirit of Pixie's process_stats, but for memory and bounded: every
``period`` seconds, one row for each of

- the ``top_n`` processes with the largest resident set (reason ``top``), and
- every process in a memory cgroup that is near its limit (reason
  ``near_limit``): a cgroup, or any of its ancestors, whose usage is at least
  ``near_limit_ratio`` of a finite hard limit (v1 memory.limit_in_bytes, v2
  memory.max). Ancestors count because a pod's limit OOM-kills in its
  containers' cgroups. At most ``max_near_limit`` of them, largest first.

A process that is both has reason ``top,near_limit`` (reasons joined with ',',
in that order; ``reason LIKE '%near_limit%'`` finds every near-limit row).

Cost: ranking reads ``/proc/PID/statm`` of every process (the smallest file
that carries the resident set: one line of page counts). Only the processes
kept are read in full (status, oom_score, oom_score_adj and, for top ones,
cgroup), through an ``O_PATH`` descriptor of ``/proc/PID`` so all four reads
describe the same process even if the pid is reused meanwhile. Near-limit
cgroups come from one walk of the memory hierarchy reading each limit, and the
usage only where the limit is finite; their processes come from their
``cgroup.procs``. A process that exits mid-read is skipped silently.

Without a memory cgroup hierarchy the source still reports the top processes
(cgroup_path NULL) and says so once in the log and in its status.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_unix_seconds
from pxo.edge.cgroups import Hierarchy
from pxo.edge.errors import EdgeError
from pxo.edge.sources.base import SamplingSource, SourceContext
from pxo.edge.sources.cgroupfs import (
    V1_UNLIMITED,
    SmallFileReader,
    check_readable,
    resolve_memory_hierarchy,
    walk_cgroups,
)

log = logging.getLogger(__name__)

PAGE_SIZE = resource.getpagesize()

PROCESS_MEMORY = Table(
    "process_memory",
    "Resident and swapped memory of the largest processes and of every process in a memory cgroup "
    "near its limit, sampled from /proc every period.",
    (
        TIME,
        Column("pid", "INTEGER", "Process id (thread group id)"),
        Column("ppid", "INTEGER", "Parent process id"),
        Column("comm", "VARCHAR", "Command name (15 characters at most)"),
        Column("cgroup_path", "VARCHAR", "The process's memory cgroup (/proc/PID/cgroup, memory hierarchy)"),
        Column("rss_bytes", "UBIGINT", "Resident set size (VmRSS = anon + file + shmem), bytes"),
        Column("anon_bytes", "UBIGINT", "Resident anonymous memory (RssAnon), bytes"),
        Column("file_bytes", "UBIGINT", "Resident file-backed memory (RssFile), bytes"),
        Column("shmem_bytes", "UBIGINT", "Resident shared memory: shmem, tmpfs, shared anon (RssShmem), bytes"),
        Column("swap_bytes", "UBIGINT", "Swapped-out anonymous memory (VmSwap), bytes"),
        Column("oom_score", "SMALLINT", "The OOM killer's current badness score (0..2000)"),
        Column("oom_score_adj", "SMALLINT", "oom_score_adj (-1000..1000)"),
        Column("reason", "VARCHAR", "Why it was sampled: 'top', 'near_limit' or 'top,near_limit'"),
    ),
)

# /proc/PID/status field -> column. The kernel prints these in kB (KiB, really:
# "VmRSS:\t    1636 kB"); they become bytes here.
_STATUS_KB = ((b"\nVmRSS:", "rss_bytes"), (b"\nRssAnon:", "anon_bytes"), (b"\nRssFile:", "file_bytes"),
              (b"\nRssShmem:", "shmem_bytes"), (b"\nVmSwap:", "swap_bytes"))


def _field(data: bytes, key: bytes) -> bytes | None:
    """The value of 'Key:\\tvalue' in /proc/PID/status (key given with its leading newline)."""
    i = data.find(key)
    if i < 0:
        return None
    i += len(key)
    j = data.find(b"\n", i)
    return data[i:j if j >= 0 else len(data)].strip()


def parse_status(data: bytes) -> dict[str, Any] | None:
    """pid-independent columns from /proc/PID/status; None for tasks without memory
    (kernel threads, zombies: no Vm* lines)."""
    if _field(data, b"\nVmRSS:") is None:
        return None
    row: dict[str, Any] = {}
    # First line "Name:\tCOMM"; the kernel escapes '\n' and '\\' in COMM, so it is one line.
    row["comm"] = data[6:data.find(b"\n")].decode(errors="replace") if data.startswith(b"Name:\t") else None
    ppid = _field(data, b"\nPPid:")
    row["ppid"] = None if ppid is None else int(ppid)
    for key, column in _STATUS_KB:
        value = _field(data, key)
        row[column] = None if value is None else int(value.split()[0]) * 1024  # kB -> bytes
    return row


def memcg_of(data: bytes, version: int) -> str | None:
    """The memory cgroup path in /proc/PID/cgroup text ("4:memory:/a/b" on v1, "0::/a/b" on v2)."""
    for line in data.splitlines():
        hid, _, rest = line.partition(b":")
        ctrls, _, path = rest.partition(b":")
        if (hid == b"0" and ctrls == b"") if version == 2 else (b"memory" in ctrls.split(b",")):
            return path.decode(errors="replace")
    return None


class ProcessMemorySource(SamplingSource):
    """Samples the largest processes, and those in near-limit memory cgroups, into process_memory."""

    name = "procfs"
    tables = (PROCESS_MEMORY,)

    def __init__(self, ctx: SourceContext, *, hierarchy: Hierarchy | None = None,
                 period: float = 10.0, top_n: int = 20, near_limit_ratio: float = 0.9,
                 max_near_limit: int = 200, max_cgroups: int = 5000) -> None:
        if top_n < 0 or max_near_limit < 0 or max_cgroups < 1:
            raise ValueError("top_n and max_near_limit must be >= 0 and max_cgroups >= 1")
        if not 0 < near_limit_ratio <= 1:
            raise ValueError(f"near_limit_ratio must be in (0, 1], not {near_limit_ratio!r}")
        super().__init__(ctx, period=period)
        proc_root = self.proc_root = ctx.proc
        self.hierarchy = hierarchy
        self.top_n = top_n
        self.near_limit_ratio = near_limit_ratio
        self.max_near_limit = max_near_limit
        self.max_cgroups = max_cgroups
        self._proc = str(proc_root).rstrip("/") or "/"
        self._io = SmallFileReader()
        self._note = ""

    def open(self) -> None:
        try:
            with os.scandir(self.proc_root):
                pass
        except OSError as exc:
            raise EdgeError(f"cannot read {self.proc_root}: {exc.strerror or exc}") from exc
        if self.hierarchy is None:
            try:
                self.hierarchy = resolve_memory_hierarchy(self.proc_root / "self" / "mountinfo")
            except EdgeError as exc:  # top processes need no cgroups: go on without them
                self._note = f"no memory cgroups ({exc}): top processes only, cgroup_path NULL"
                log.warning("procfs source: %s", self._note)
        if self.hierarchy is not None:
            check_readable(self.hierarchy)

    # -- one sample ------------------------------------------------------------

    def sample(self, now: float) -> int:
        started = time.perf_counter()
        stamp = from_unix_seconds(now)
        rss = self._rss_by_pid()
        near, cg_capped = self._near_limit_pids() if self.hierarchy is not None else ({}, False)
        rows = 0
        emitted: set[int] = set()
        for pid in sorted(rss, key=rss.__getitem__, reverse=True):
            if rows >= self.top_n:
                break
            in_near = pid in near
            row = self._read_process(pid, near.get(pid))
            if row is None:
                continue  # exited since it was ranked: the next one takes its place
            row["reason"] = "top,near_limit" if in_near else "top"
            row["time"] = stamp
            self.emit(PROCESS_MEMORY.name, row)
            emitted.add(pid)
            rows += 1
        rest = sorted((p for p in near if p not in emitted), key=lambda p: rss.get(p, 0), reverse=True)
        near_rows, near_capped = 0, False
        for pid in rest:
            if near_rows >= self.max_near_limit:
                near_capped = True
                break
            row = self._read_process(pid, near[pid])
            if row is None:
                continue
            row["reason"] = "near_limit"
            row["time"] = stamp
            self.emit(PROCESS_MEMORY.name, row)
            near_rows += 1
        took = (time.perf_counter() - started) * 1000
        notes = [self._note] if self._note else []
        if near_capped:
            notes.append(f"capped: kept the largest {self.max_near_limit} of {len(rest)} processes "
                         "in near-limit cgroups (max_near_limit)")
        if cg_capped:
            notes.append(f"capped: looked for near-limit cgroups among the first {self.max_cgroups} only")
        notes.append(f"{rows + near_rows} of {len(rss)} processes in {took:.1f} ms")
        self.status.detail = "; ".join(notes)
        return rows + near_rows

    def _rss_by_pid(self) -> dict[int, int]:
        """Resident bytes of every process with memory, from /proc/PID/statm."""
        out: dict[int, int] = {}
        proc, read = self._proc, self._io.read
        for name in os.listdir(proc):
            if not name.isdigit():
                continue
            try:
                statm = read(f"{proc}/{name}/statm")
            except OSError:
                continue  # exited
            # statm: size resident shared text lib data dt, in pages (not kB).
            resident = int(statm.split(None, 2)[1]) * PAGE_SIZE
            if resident:  # kernel threads have no mm: all zeros
                out[int(name)] = resident
        return out

    def _near_limit_pids(self) -> tuple[dict[int, str], bool]:
        """pid -> memory cgroup path for processes in cgroups at or beneath one near its limit."""
        h = self.hierarchy
        assert h is not None
        cgroups, capped = walk_cgroups(h, self.max_cgroups)
        limit_file, usage_file = (("memory.limit_in_bytes", "memory.usage_in_bytes") if h.version == 1
                                  else ("memory.max", "memory.current"))
        near: set[str] = set()
        pids: dict[int, str] = {}
        read = self._io.read
        for path, directory, _ in cgroups:
            if path == "/":
                continue  # the root has no limit
            parent = path.rpartition("/")[0] or "/"
            if parent in near:  # breadth-first: parents were decided first
                near.add(path)
            else:
                try:
                    limit_text = read(f"{directory}/{limit_file}").strip()
                    if limit_text == b"max" or int(limit_text) >= V1_UNLIMITED:
                        continue
                    if int(read(f"{directory}/{usage_file}")) < self.near_limit_ratio * int(limit_text):
                        continue
                except OSError:
                    continue  # removed meanwhile
                near.add(path)
            try:
                procs = read(f"{directory}/cgroup.procs")
            except OSError:
                continue
            for pid in procs.split():
                pids[int(pid)] = path
        return pids, capped

    def _read_process(self, pid: int, cgroup_path: str | None) -> dict[str, Any] | None:
        """One row (without time and reason); None if the process is gone or has no memory."""
        read = self._io.read
        try:
            dfd = os.open(f"{self._proc}/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            row = parse_status(read("status", dfd))
            if row is None:
                return None
            row["oom_score"] = int(read("oom_score", dfd))
            row["oom_score_adj"] = int(read("oom_score_adj", dfd))
            if cgroup_path is None and self.hierarchy is not None:
                cgroup_path = memcg_of(read("cgroup", dfd), self.hierarchy.version)
        except OSError:  # exited meanwhile (ENOENT, ESRCH); anything else is one process, not the source
            return None
        finally:
            os.close(dfd)
        row["pid"] = pid
        row["cgroup_path"] = cgroup_path
        return row
