"""OOM kills, one row per killed task, from two inputs joined here:

- eBPF (bpf/oom.bpf.c): a raw tracepoint on oom:mark_victim reads the victim's
  own task_struct with offsets from the running kernel's BTF: exact memory
  figures and the victim's cgroups walked in the kernel at the moment of the
  kill. Fires for every killed task, group-kill members included.
- the kernel log (/dev/kmsg, edge/kmsg.py): why the kernel killed (the
  constraint), which memory cgroup hit its limit, the pool it chose from, the
  allocation that failed, and the table of candidate tasks (oom_candidates).
  Each record has a sequence number, so the backlog read at start recovers
  kills that happened while the edge was down, without duplicates.

The two are joined by victim pid within ``join_window`` seconds of each other.
When one input is missing the source still runs, degraded, and says which half
is missing; every row records where it came from (``origin``).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import logging
import os
import resource
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.edge.bpf import (
    PXO_COMM_LEN,
    CgroupC,
    SharedStruct,
    boot_to_utc,
    cgroup_path,
    comm,
    load_program,
    read_counter,
    require_tracepoint,
)
from pxo.edge.btf import VMLINUX
from pxo.edge.cgroups import Hierarchy, memory_hierarchy
from pxo.edge.errors import EdgeError, PrerequisiteError
from pxo.edge.kmsg import Kill, OomLogParser, OomReport, parse_record
from pxo.edge.sources.base import Sink, Source
from pxo.edge.sources.cgroupfs import read_memcg

log = logging.getLogger(__name__)

PAGE_SIZE = resource.getpagesize()
KB = 1024

OOM_EVENTS = Table(
    "oom_events",
    "One row per task the kernel's OOM killer killed (group-kill members included), attributed to the "
    "victim's own cgroups, with why the kernel killed and the state of the cgroup that ran out.",
    (
        TIME,
        Column("pid", "INTEGER", "Victim process id (thread group id)"),
        Column("tid", "INTEGER", "Victim task id the kernel marked"),
        Column("comm", "VARCHAR", "Victim command name (15 characters at most)"),
        Column("uid", "UBIGINT", "Victim's user id in the initial user namespace"),
        Column("oom_score_adj", "SMALLINT", "Victim's oom_score_adj (-1000..1000)"),
        Column("total_vm_bytes", "UBIGINT", "Victim's virtual memory size, bytes"),
        Column("anon_rss_bytes", "UBIGINT", "Victim's resident anonymous memory at the kill, bytes"),
        Column("file_rss_bytes", "UBIGINT", "Victim's resident file-backed memory at the kill, bytes"),
        Column("shmem_rss_bytes", "UBIGINT", "Victim's resident shared memory at the kill, bytes"),
        Column("swap_bytes", "UBIGINT", "Victim's swapped-out memory, bytes (eBPF only)"),
        Column("pgtables_bytes", "UBIGINT", "Victim's page tables, bytes"),
        Column("trigger_pid", "INTEGER", "Process whose allocation invoked the OOM killer"),
        Column("trigger_tid", "INTEGER", "Task whose allocation invoked the OOM killer (eBPF only)"),
        Column("trigger_comm", "VARCHAR", "Command name of the triggering task"),
        Column("cgroup_path", "VARCHAR",
               "Victim's memory cgroup (v1 memory hierarchy or v2), as the kernel names it"),
        Column("cgroup_id", "UBIGINT", "Inode number of the victim's memory cgroup directory"),
        Column("cgroup_v2_path", "VARCHAR", "Victim's cgroup in the unified (v2) hierarchy (eBPF only)"),
        Column("cgroup_v2_id", "UBIGINT", "Inode number of the victim's v2 cgroup directory"),
        Column("constraint", "VARCHAR",
               "Why the kernel had to kill: memcg (a cgroup hit its limit), global (the node ran out), cpuset "
               "or mempolicy. From the kernel log; NULL when the kernel rate-limited its report"),
        Column("oom_memcg_path", "VARCHAR",
               "The memory cgroup whose limit was hit (memcg OOMs): the victim's own or an ancestor's"),
        Column("pool_bytes", "UBIGINT",
               "Size of the pool the kernel chose the victim from: the OOMing cgroup's limit plus the swap it "
               "may use, or all RAM plus swap for a global OOM. NOT the victim's usage (bcc's oomkill "
               "prints this as 'pages')"),
        Column("gfp_mask", "VARCHAR", "GFP flags of the allocation that failed"),
        Column("alloc_order", "INTEGER", "Order of the allocation that failed (pages = 2^order)"),
        Column("memcg_usage_bytes", "UBIGINT", "Usage of the OOMing memory cgroup at the kill, bytes"),
        Column("memcg_limit_bytes", "UBIGINT", "Limit of the OOMing memory cgroup, bytes (NULL: unlimited)"),
        Column("memcg_peak_bytes", "UBIGINT",
               "Peak usage the OOMing memory cgroup has recorded (v1 max_usage_in_bytes, v2 memory.peak)"),
        Column("memcg_swap_bytes", "UBIGINT", "Swap used by the OOMing memory cgroup, bytes"),
        Column("memcg_oom_kills", "UBIGINT", "The OOMing memory cgroup's own count of OOM kills, this one included"),
        Column("oom_id", "VARCHAR",
               "Identifies the OOM report: links a kill to its candidates in oom_candidates, and the "
               "members of one group kill to each other (<boot id>:<kernel log sequence number>)"),
        Column("kmsg_seq", "UBIGINT", "Kernel log sequence number of the 'Killed process' record"),
        Column("boot_id", "VARCHAR", "The node's boot id when the kill happened"),
        Column("origin", "VARCHAR",
               "Where the row came from: bpf+kmsg, bpf (no kernel log record), kmsg (eBPF unavailable), or "
               "kmsg-backlog (a kill that happened while the edge was not running)"),
    ),
)

OOM_CANDIDATES = Table(
    "oom_candidates",
    "The kernel's table of the tasks it considered for each OOM kill (vm.oom_dump_tasks): who else was "
    "using the memory. Linked to oom_events by oom_id.",
    (
        TIME,
        Column("oom_id", "VARCHAR", "The OOM report these candidates belong to (see oom_events.oom_id)"),
        Column("pid", "INTEGER", "Candidate task id"),
        Column("tgid", "INTEGER", "Candidate process id"),
        Column("uid", "UBIGINT", "Candidate's user id"),
        Column("comm", "VARCHAR", "Candidate's command name"),
        Column("total_vm_bytes", "UBIGINT", "Virtual memory size, bytes"),
        Column("rss_bytes", "UBIGINT", "Resident memory, bytes"),
        Column("rss_anon_bytes", "UBIGINT", "Resident anonymous memory, bytes (newer kernels)"),
        Column("rss_file_bytes", "UBIGINT", "Resident file-backed memory, bytes (newer kernels)"),
        Column("rss_shmem_bytes", "UBIGINT", "Resident shared memory, bytes (newer kernels)"),
        Column("swap_bytes", "UBIGINT", "Swapped-out memory, bytes"),
        Column("pgtables_bytes", "UBIGINT", "Page tables, bytes"),
        Column("oom_score_adj", "SMALLINT", "oom_score_adj"),
        Column("victim", "BOOLEAN", "This candidate was chosen and killed"),
        Column("oom_memcg_path", "VARCHAR", "The memory cgroup whose tasks were listed (memcg OOMs)"),
        Column("constraint", "VARCHAR", "memcg, global, cpuset or mempolicy"),
    ),
)


# -- the struct shared with bpf/oom.h -------------------------------------------


class OomEventC(SharedStruct):
    """Mirror of struct oom_event: keep in sync with bpf/oom.h."""

    c_header = "oom.h"
    c_struct = "oom_event"
    _fields_ = [
        ("boot_ns", ctypes.c_uint64),
        ("victim_tgid", ctypes.c_uint32),
        ("victim_tid", ctypes.c_uint32),
        ("trigger_tgid", ctypes.c_uint32),
        ("trigger_tid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("oom_score_adj", ctypes.c_int32),
        ("total_vm_pages", ctypes.c_uint64),
        ("anon_rss_pages", ctypes.c_uint64),
        ("file_rss_pages", ctypes.c_uint64),
        ("shmem_rss_pages", ctypes.c_uint64),
        ("swap_pages", ctypes.c_uint64),
        ("pgtables_bytes", ctypes.c_uint64),
        ("victim_comm", ctypes.c_char * PXO_COMM_LEN),
        ("trigger_comm", ctypes.c_char * PXO_COMM_LEN),
        ("memcg", CgroupC),
        ("cgroup_v2", CgroupC),
        ("trigger_memcg_id", ctypes.c_uint64),
    ]


def event_row(e: OomEventC, *, to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> dict[str, Any]:
    """The eBPF half of an oom_events row: pages become bytes here."""
    return {
        "time": to_utc(e.boot_ns),
        "pid": e.victim_tgid,
        "tid": e.victim_tid,
        "comm": comm(e.victim_comm),
        "uid": e.uid,
        "oom_score_adj": e.oom_score_adj,
        "total_vm_bytes": e.total_vm_pages * PAGE_SIZE,
        "anon_rss_bytes": e.anon_rss_pages * PAGE_SIZE,
        "file_rss_bytes": e.file_rss_pages * PAGE_SIZE,
        "shmem_rss_bytes": e.shmem_rss_pages * PAGE_SIZE,
        "swap_bytes": e.swap_pages * PAGE_SIZE,
        "pgtables_bytes": e.pgtables_bytes,
        "trigger_pid": e.trigger_tgid,
        "trigger_tid": e.trigger_tid,
        "trigger_comm": comm(e.trigger_comm),
        "cgroup_path": cgroup_path(e.memcg),
        "cgroup_id": e.memcg.id or None,
        "cgroup_v2_path": cgroup_path(e.cgroup_v2),
        "cgroup_v2_id": e.cgroup_v2.id or None,
        "origin": "bpf",
    }


# -- the kernel-log half -------------------------------------------------------------


def monotonic_to_utc(ts_us: int) -> dt.datetime:
    """A kmsg timestamp (the kernel's local clock since boot) in UTC."""
    now_real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    now_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    unix_ns = now_real - (now_mono - ts_us * 1000)
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=unix_ns // 1000)


def read_meminfo(path: Path) -> dict[str, int]:
    """/proc/meminfo in bytes (the file says kB)."""
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * KB
    except OSError:
        pass
    return out


def pool_bytes(report: OomReport | None, meminfo: dict[str, int]) -> int | None:
    """The size of what the kernel chose from (oom_control.totalpages), in bytes.

    memcg: mem_cgroup_get_max(): the limit, plus the swap the cgroup may use
    (v1: memory+swap limit minus memory limit; v2: the swap limit), never
    more swap than the node has. global: all RAM plus all swap.
    cpuset/mempolicy: the allowed nodes' memory, which the log does not give.
    """
    if report is None:
        return None
    swap_total = meminfo.get("SwapTotal", 0)
    if report.constraint == "global":
        return meminfo.get("MemTotal", 0) + swap_total if "MemTotal" in meminfo else None
    if report.constraint == "memcg" and report.memory_limit_kb is not None:
        limit = report.memory_limit_kb * KB
        if report.memsw_limit_kb is not None:
            swap = max(report.memsw_limit_kb * KB - limit, 0)
        elif report.swap_limit_kb is not None:
            swap = report.swap_limit_kb * KB
        else:
            swap = swap_total
        return limit + min(swap, swap_total)
    return None


class OomSource(Source):
    """oom_events and oom_candidates: eBPF and the kernel log, joined by victim pid."""

    name = "oom"
    tables = (OOM_EVENTS, OOM_CANDIDATES)

    def __init__(
        self,
        *,
        sink: Sink,
        use_bpf: bool = True,
        btf_path: Path = VMLINUX,
        kmsg_path: Path = Path("/dev/kmsg"),
        proc_root: Path = Path("/proc"),
        join_window: float = 1.0,
        recorded: Callable[[str, int, int, dt.datetime], bool] | None = None,
        hierarchy: Hierarchy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sink=sink, **kwargs)
        self._use_bpf = use_bpf
        self._btf_path = btf_path
        self._kmsg_path = kmsg_path
        self._proc = proc_root
        self.join_window = join_window
        # recorded(boot_id, kmsg_seq, pid, time): is this kill already in the store?
        self._recorded = recorded or (lambda *_: False)
        self._hierarchy = hierarchy  # the memory hierarchy, for the OOMing cgroup's state
        self._bpf: Any = None
        self._kmsg_fd: int | None = None
        self._parser = OomLogParser()
        self.boot_id = ""
        self._meminfo: dict[str, int] = {}
        self._pending_bpf: dict[int, tuple[float, dict[str, Any]]] = {}  # pid -> (deadline, row)
        self._pending_kmsg: dict[int, tuple[float, Kill]] = {}
        self._reports_emitted: set[int] = set()
        self.bpf_error = ""
        self.kmsg_error = ""
        self.kills_by_constraint: dict[str, int] = {}  # for the edge's metrics
        # (namespace, pod, container) -> kills, for the edge's metrics: only pods that OOMed get a key
        self.kills_by_pod: dict[tuple[str, str, str], int] = {}

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> None:
        try:
            self.boot_id = (self._proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        except OSError:
            self.boot_id = "unknown"
        self._meminfo = read_meminfo(self._proc / "meminfo")
        if self._hierarchy is None:
            try:
                self._hierarchy = memory_hierarchy()
            except EdgeError as exc:
                log.info("no memory cgroup hierarchy (%s): oom_events.memcg_* columns stay empty", exc)
        if self._use_bpf:
            try:
                require_tracepoint("oom", "mark_victim", field="uid")  # the (task, uid) form of Linux 6.9+
                self._bpf = load_program("oom", settings={"OOM_EVENT_SIZE": ctypes.sizeof(OomEventC)},
                                         btf_path=self._btf_path)
                self._bpf["oom_events"].open_ring_buffer(self._on_bpf_event)
            except PrerequisiteError as exc:
                self.bpf_error = str(exc)
        else:
            self.bpf_error = "eBPF disabled by configuration"
        try:
            self._kmsg_fd = os.open(self._kmsg_path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.kmsg_error = f"cannot read {self._kmsg_path}: {exc.strerror} (needs root or CAP_SYSLOG)"
        if self._bpf is None and self._kmsg_fd is None:
            raise PrerequisiteError(f"{self.bpf_error}; and the kernel log is unavailable: {self.kmsg_error}")
        if self._bpf is None:
            self.degrade(f"{self.bpf_error}. OOM kills come from the kernel log only: no swap, v2 cgroup or "
                         "trigger task id, and no kill while the kernel rate-limits its reports")
        elif self._kmsg_fd is None:
            self.degrade(f"{self.kmsg_error}. OOM kills come from eBPF only: no constraint, OOMing cgroup, "
                         "pool size or candidates, and no recovery of kills missed while the edge was down")
        if self._kmsg_fd is not None:
            self._read_kmsg(backlog=True)

    def poll(self, timeout: float) -> None:
        if self._bpf is not None:
            # A short wait keeps the kernel log's side of a join as fresh as the eBPF side.
            self._bpf.ring_buffer_poll(int(min(timeout, 0.05) * 1000))
            self.status.lost = max(self.status.lost, read_counter(self._bpf, "oom_lost"))
        elif self._kmsg_fd is not None:
            p = select.poll()
            p.register(self._kmsg_fd, select.POLLIN)
            p.poll(timeout * 1000)
        if self._kmsg_fd is not None:
            self._read_kmsg(backlog=False)
        self._expire(time.monotonic())

    def close(self) -> None:
        self._expire(float("inf"))  # nothing pending is lost at shutdown
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None

    # -- the two inputs ------------------------------------------------------------

    def _on_bpf_event(self, _ctx: Any, data: int, size: int) -> None:
        if size < ctypes.sizeof(OomEventC):
            self.status.lost += 1
            return
        row = event_row(OomEventC.from_address(data))
        row["boot_id"] = self.boot_id
        pending = self._pending_kmsg.pop(row["pid"], None)
        if pending is not None:
            self._emit_kill(row, pending[1], origin="bpf+kmsg")
        elif self._kmsg_fd is None:
            self._emit_kill(row, None, origin="bpf")
        else:
            self._pending_bpf[row["pid"]] = (time.monotonic() + self.join_window, row)

    def _read_kmsg(self, *, backlog: bool) -> None:
        assert self._kmsg_fd is not None
        while True:
            try:
                raw = os.read(self._kmsg_fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return
                if exc.errno == errno.EPIPE:  # the ring overwrote records we had not read yet
                    self.status.lost += 1
                    continue
                raise EdgeError(f"reading {self._kmsg_path} failed: {exc.strerror}") from exc
            rec = parse_record(raw)
            if rec is None:
                continue
            kill = self._parser.feed(rec)
            if kill is not None:
                self._on_kill(kill, backlog=backlog)

    def _on_kill(self, kill: Kill, *, backlog: bool) -> None:
        if backlog:
            when = monotonic_to_utc(kill.ts_us)
            if not self._recorded(self.boot_id, kill.seq, kill.pid, when):
                self._emit_kill(self._kmsg_row(kill), kill, origin="kmsg-backlog")
            return
        pending = self._pending_bpf.pop(kill.pid, None)
        if pending is not None:
            self._emit_kill(pending[1], kill, origin="bpf+kmsg")
        elif self._bpf is None:
            self._emit_kill(self._kmsg_row(kill), kill, origin="kmsg")
        else:
            self._pending_kmsg[kill.pid] = (time.monotonic() + self.join_window, kill)

    def _expire(self, now: float) -> None:
        for pid, (deadline, row) in list(self._pending_bpf.items()):
            if deadline <= now:
                del self._pending_bpf[pid]
                self._emit_kill(row, None, origin="bpf")
        for pid, (deadline, kill) in list(self._pending_kmsg.items()):
            if deadline <= now:  # eBPF did not see it (its ring buffer overflowed?)
                del self._pending_kmsg[pid]
                self._emit_kill(self._kmsg_row(kill), kill, origin="kmsg")

    # -- rows --------------------------------------------------------------------

    def _kmsg_row(self, kill: Kill) -> dict[str, Any]:
        """The kernel log's account of a kill, for when eBPF has none."""
        r = kill.report
        kb = kill.values_kb
        path = r.task_memcg if r is not None else None
        return {
            "time": monotonic_to_utc(kill.ts_us),
            "pid": kill.pid,
            "tid": r.victim_pid if r is not None and r.victim_pid == kill.pid else None,
            "comm": kill.comm,
            "uid": kill.uid,
            "oom_score_adj": kill.oom_score_adj,
            "total_vm_bytes": kb.get("total-vm", 0) * KB if "total-vm" in kb else None,
            "anon_rss_bytes": kb["anon-rss"] * KB if "anon-rss" in kb else None,
            "file_rss_bytes": kb["file-rss"] * KB if "file-rss" in kb else None,
            "shmem_rss_bytes": kb["shmem-rss"] * KB if "shmem-rss" in kb else None,
            "pgtables_bytes": kb["pgtables"] * KB if "pgtables" in kb else None,
            "trigger_pid": r.trigger_pid if r is not None else None,
            "trigger_comm": r.trigger_comm if r is not None else None,
            "cgroup_path": path,
            "boot_id": self.boot_id,
        }

    def _emit_kill(self, row: dict[str, Any], kill: Kill | None, *, origin: str) -> None:
        row = dict(row)
        row["origin"] = origin
        row.setdefault("boot_id", self.boot_id)
        if origin != "kmsg-backlog":  # a past kill: today's state of its cgroup would mislead
            self._add_memcg_state(row, kill.report if kill is not None else None)
        if kill is not None:
            r = kill.report
            row["kmsg_seq"] = kill.seq
            row["oom_id"] = f"{self.boot_id}:{r.seq if r is not None else kill.seq}"
            if r is not None:
                row.update({
                    "constraint": r.constraint,
                    "oom_memcg_path": r.oom_memcg,
                    "pool_bytes": pool_bytes(r, self._meminfo),
                    "gfp_mask": r.gfp_mask or None,
                    "alloc_order": r.order,
                })
                if r.memory_usage_kb is not None:  # printed at the kill: better than read just after
                    row["memcg_usage_bytes"] = r.memory_usage_kb * KB
                    row["memcg_limit_bytes"] = r.memory_limit_kb * KB if r.memory_limit_kb is not None else None
                if row.get("trigger_pid") is None:
                    row["trigger_pid"] = r.trigger_pid
                if r.seq not in self._reports_emitted:
                    self._reports_emitted.add(r.seq)
                    self._emit_candidates(r, row["oom_id"], row["time"])
        constraint = row.get("constraint") or "unknown"
        self.kills_by_constraint[constraint] = self.kills_by_constraint.get(constraint, 0) + 1
        attributor = getattr(self._sink, "attributor", None)  # AttributingSink: the pod's names, at the kill
        if attributor is not None and row.get("cgroup_path"):
            who = attributor.attribute(row["cgroup_path"])
            if who.get("pod"):
                key = (who.get("namespace") or "", who["pod"], who.get("container") or "")
                self.kills_by_pod[key] = self.kills_by_pod.get(key, 0) + 1
        self.emit("oom_events", row)

    def _add_memcg_state(self, row: dict[str, Any], report: OomReport | None) -> None:
        """The OOMing cgroup's peak, swap and kill count, read now, milliseconds after the kill."""
        path = (report.oom_memcg if report is not None else None) or row.get("cgroup_path")
        if self._hierarchy is None or not path:
            return
        state = read_memcg(self._hierarchy, path)
        if state is None:  # already removed by its runtime
            return
        row["memcg_usage_bytes"] = state.get("usage_bytes")
        row["memcg_limit_bytes"] = state.get("limit_bytes")
        row["memcg_peak_bytes"] = state.get("peak_bytes")
        row["memcg_swap_bytes"] = state.get("swap_bytes")
        row["memcg_oom_kills"] = state.get("events_oom_kill")

    def _emit_candidates(self, r: OomReport, oom_id: str, when: dt.datetime) -> None:
        for c in r.candidates:
            pages = c.pages

            def b(key: str, pages: dict[str, int] = pages) -> int | None:
                return pages[key] * PAGE_SIZE if key in pages else None  # the table is in pages

            self.emit("oom_candidates", {
                "time": when, "oom_id": oom_id, "pid": c.pid, "tgid": c.tgid, "uid": c.uid, "comm": c.name,
                "total_vm_bytes": b("total_vm"), "rss_bytes": b("rss"), "rss_anon_bytes": b("rss_anon"),
                "rss_file_bytes": b("rss_file"), "rss_shmem_bytes": b("rss_shmem"), "swap_bytes": b("swapents"),
                "pgtables_bytes": c.pgtables_bytes, "oom_score_adj": c.oom_score_adj,
                "victim": c.tgid == r.victim_pid or c.pid == r.victim_pid,
                "oom_memcg_path": r.oom_memcg or r.stats_cgroup, "constraint": r.constraint,
            })
        if len(self._reports_emitted) > 10_000:  # bounded memory on a node that OOMs forever
            self._reports_emitted = set(sorted(self._reports_emitted)[-1000:])
