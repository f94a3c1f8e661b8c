"""OOM kills, one row per killed task, built from two inputs and a joiner:

- eBPF (bpf/oom.bpf.c, a ``RingBufferInput``): a raw tracepoint on
  oom:mark_victim reads the victim's own task_struct with offsets from the
  running kernel's BTF: exact memory figures, the victim's cgroups walked in
  the kernel at the moment of the kill, the cgroup counters that say which
  cgroup ran out, and the kernel stack that says whether a cgroup or the
  node ran out and whether the task was chosen or killed with its
  memory.oom.group. Fires for every killed task.
- the kernel log (/dev/kmsg, a ``KmsgInput``, edge/kmsg.py): why the kernel
  killed (the constraint), which memory cgroup hit its limit, the pool it
  chose from, the allocation that failed, and the table of candidate tasks
  (oom_candidates), when the kernel did not rate-limit its report. Each
  record has a sequence number, so the backlog read at start recovers kills
  that happened while the edge was down, without duplicates.
- the joiner (edge/oomjoin.py) makes one row per killed task from the two,
  grouping the members of a group kill under one ``oom_id``.

When one input is missing the source still runs, degraded, and says which
half is missing; every row records where it came from (``origin``).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import resource
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_kernel_clock
from pxo.edge.bpf import (
    PXO_COMM_LEN,
    PXO_PATH_DEPTH,
    CgroupC,
    SharedStruct,
    boot_to_utc,
    cgroup_path,
    comm,
)
from pxo.edge.cgroups import Hierarchy, memory_hierarchy
from pxo.edge.errors import EdgeError, PrerequisiteError
from pxo.edge.kmsg import Kill, KmsgInput, OomReport
from pxo.edge.ksyms import KernelSymbols
from pxo.edge.oomjoin import BpfKill, OomJoiner
from pxo.edge.sources.base import Source, SourceContext
from pxo.edge.sources.cgroupfs import read_memcg
from pxo.edge.sources.ringbuf import RingBufferInput

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
        Column("ns_pid", "INTEGER",
               "Victim's process id in its own pid namespace (1: the main process of its container); NULL when it runs "
               "in the node's own pid namespace (eBPF only)"),
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
               "or mempolicy. From the kernel's report; when it rate-limited the report, from the kernel stack "
               "at the kill (memcg or global: cpuset and mempolicy are then reported as global on NUMA nodes)"),
        Column("oom_memcg_path", "VARCHAR",
               "The memory cgroup whose limit was hit (memcg OOMs): the victim's own or an ancestor's. From the "
               "report, or from the page counters of the victim's cgroups at the kill"),
        Column("chosen", "BOOLEAN",
               "The OOM killer chose this task; false for the other members of a memory.oom.group kill"),
        Column("oom_group_path", "VARCHAR",
               "For a memory.oom.group kill: the cgroup whose tasks were all killed (NULL otherwise)"),
        Column("report_logged", "BOOLEAN",
               "The kernel logged its report for this kill (constraint, cgroup, candidate table); false when "
               "it rate-limited it (about 10 per 5 s): oom_candidates then has no rows for it"),
        Column("pool_bytes", "UBIGINT",
               "Size of the pool the kernel chose the victim from: the OOMing cgroup's limit plus the swap it "
               "may use, or all RAM plus swap for a global OOM. NOT the victim's usage (bcc's oomkill "
               "prints this as 'pages')"),
        Column("gfp_mask", "VARCHAR", "GFP flags of the allocation that failed"),
        Column("alloc_order", "INTEGER", "Order of the allocation that failed (pages = 2^order)"),
        Column("memcg_usage_bytes", "UBIGINT", "Usage of the OOMing memory cgroup at the kill, bytes"),
        Column("memcg_limit_bytes", "UBIGINT", "Limit of the OOMing memory cgroup, bytes (NULL: unlimited)"),
        Column("memcg_peak_bytes", "UBIGINT",
               "Peak usage the OOMing memory cgroup has recorded (v1 max_usage_in_bytes, v2 memory.peak from "
               "Linux 5.19)"),
        Column("memcg_swap_bytes", "UBIGINT", "Swap used by the OOMing memory cgroup, bytes"),
        Column("memcg_oom_kills", "UBIGINT", "The OOMing memory cgroup's own count of OOM kills, this one included"),
        Column("oom_id", "VARCHAR",
               "Identifies one invocation of the OOM killer: links a kill to its candidates in oom_candidates, "
               "and the members of one group kill to each other (<boot id>:<kernel log sequence number>)"),
        Column("kmsg_seq", "UBIGINT", "Kernel log sequence number of the 'Killed process' record"),
        Column("boot_id", "VARCHAR", "The node's boot id when the kill happened"),
        Column("origin", "VARCHAR",
               "Where the row came from: bpf+kmsg, bpf (no kernel log record), kmsg (eBPF unavailable), or "
               "kmsg-backlog (a kill that happened while the edge was not running)"),
    ),
    urgent=True,
)

_SPLIT_RSS = " (the kernel prints it from 6.12 on; not 5.10, 6.1)"

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
        Column("rss_anon_bytes", "UBIGINT", f"Resident anonymous memory, bytes{_SPLIT_RSS}"),
        Column("rss_file_bytes", "UBIGINT", f"Resident file-backed memory, bytes{_SPLIT_RSS}"),
        Column("rss_shmem_bytes", "UBIGINT", f"Resident shared memory, bytes{_SPLIT_RSS}"),
        Column("swap_bytes", "UBIGINT", "Swapped-out memory, bytes"),
        Column("pgtables_bytes", "UBIGINT", "Page tables, bytes"),
        Column("oom_score_adj", "SMALLINT", "oom_score_adj"),
        Column("victim", "BOOLEAN", "This candidate was chosen and killed"),
        Column("oom_memcg_path", "VARCHAR", "The memory cgroup whose tasks were listed (memcg OOMs)"),
        Column("constraint", "VARCHAR", "memcg, global, cpuset or mempolicy"),
    ),
    urgent=True,
)


# -- the struct shared with bpf/oom.h -------------------------------------------

PXO_OOM_STACK_DEPTH = 32


class MemcgLevelC(SharedStruct):
    """Mirror of struct pxo_memcg_level: keep in sync with bpf/oom.h."""

    c_header = "oom.h"
    c_struct = "pxo_memcg_level"
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("usage_pages", ctypes.c_uint64),
        ("max_pages", ctypes.c_uint64),
        ("memsw_usage_pages", ctypes.c_uint64),
        ("memsw_max_pages", ctypes.c_uint64),
        ("oom_events", ctypes.c_uint64),
        ("oom_group", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


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
        ("ns_tgid", ctypes.c_uint32),
        ("ns_level", ctypes.c_uint32),
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
        ("levels", MemcgLevelC * PXO_PATH_DEPTH),
        ("trigger_path_ids", ctypes.c_uint64 * PXO_PATH_DEPTH),
        ("trigger_depth", ctypes.c_uint32),
        ("stack_bytes", ctypes.c_int32),
        ("kstack", ctypes.c_uint64 * PXO_OOM_STACK_DEPTH),
    ]


def event_row(e: OomEventC, *, to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> dict[str, Any]:
    """The eBPF half of an oom_events row: pages become bytes here."""
    found = e.victim_tgid != 0  # 0: the (int pid) form of mark_victim, whose task was not found
    return {
        "time": to_utc(e.boot_ns),
        "pid": e.victim_tgid if found else e.victim_tid,
        "tid": e.victim_tid,
        "comm": comm(e.victim_comm) if found else None,
        "uid": e.uid if found else None,
        "oom_score_adj": e.oom_score_adj if found else None,
        "ns_pid": e.ns_tgid if found and e.ns_level > 0 else None,
        "total_vm_bytes": e.total_vm_pages * PAGE_SIZE if found else None,
        "anon_rss_bytes": e.anon_rss_pages * PAGE_SIZE if found else None,
        "file_rss_bytes": e.file_rss_pages * PAGE_SIZE if found else None,
        "shmem_rss_bytes": e.shmem_rss_pages * PAGE_SIZE if found else None,
        "swap_bytes": e.swap_pages * PAGE_SIZE if found else None,
        "pgtables_bytes": e.pgtables_bytes if found else None,
        "trigger_pid": e.trigger_tgid,
        "trigger_tid": e.trigger_tid,
        "trigger_comm": comm(e.trigger_comm),
        "cgroup_path": cgroup_path(e.memcg),
        "cgroup_id": e.memcg.id or None,
        "cgroup_v2_path": cgroup_path(e.cgroup_v2),
        "cgroup_v2_id": e.cgroup_v2.id or None,
    }


# -- which cgroup ran out, from its page counters ---------------------------------------

# PAGE_COUNTER_MAX is LONG_MAX / PAGE_SIZE: any limit this high is "no limit".
_UNLIMITED_PAGES = 1 << 50
# A charge that invokes the OOM killer is at most 2^PAGE_ALLOC_COSTLY_ORDER pages.
_COSTLY_PAGES = 8


def _level_paths(e: OomEventC) -> list[str]:
    """The path of each entry of e.levels (the victim's memcg first, then its ancestors)."""
    names = [bytes(e.memcg.names[i].value).decode("utf-8", "replace") for i in range(e.memcg.depth)]
    prefix = "/..." if e.memcg.truncated else ""
    return [prefix + "/" + "/".join(reversed(names[i:])) for i in range(len(names))]


def _margin(level: MemcgLevelC) -> float | None:
    """Pages left below the level's limit (memory, and v1's memory+swap); None when unlimited."""
    margins = [lim - use for use, lim in ((level.usage_pages, level.max_pages),
                                          (level.memsw_usage_pages, level.memsw_max_pages))
               if 0 < lim < _UNLIMITED_PAGES]
    return min(margins) if margins else None


def oom_memcg_level(e: OomEventC) -> int | None:
    """The index in e.levels of the memory cgroup whose limit the failed charge hit, or None.

    The charge that failed was the trigger's, so the cgroup is one the
    trigger's path and the victim's share (the victim was chosen inside it):
    at or above their lowest common cgroup. A charge fails at the lowest
    cgroup it would push past its limit, and an OOM follows only after that
    cgroup's reclaim failed, so that cgroup is (within the few pages of the
    charge) at its limit at the kill, and it has counted an OOM of its own
    (memory.events.local oom). The lowest such level is it; when counters
    moved since (tasks freeing memory), the closest to its limit is taken.
    """
    depth = min(e.memcg.depth, PXO_PATH_DEPTH)
    trigger = {e.trigger_path_ids[i] for i in range(min(e.trigger_depth, PXO_PATH_DEPTH))}
    start = next((i for i in range(depth) if e.levels[i].id in trigger), 0)
    candidates = [(i, m) for i in range(start, depth)
                  if e.levels[i].oom_events > 0 and (m := _margin(e.levels[i])) is not None]
    if not candidates:
        return None
    for limit in (0, _COSTLY_PAGES - 1):
        for i, m in candidates:
            if m <= limit:
                return i
    return min(candidates, key=lambda c: c[1] / max(e.levels[c[0]].max_pages, 1))[0]


def oom_group_level(e: OomEventC, oom_level: int | None) -> int | None:
    """The memory.oom.group cgroup the kernel kills whole (mem_cgroup_get_oom_group): the
    highest cgroup with oom_group set from the victim's up to the OOMing one (for a node
    OOM, up to the root)."""
    top = oom_level if oom_level is not None else min(e.memcg.depth, PXO_PATH_DEPTH) - 1
    found = None
    for i in range(top + 1):
        if e.levels[i].oom_group:
            found = i
    return found


def bpf_kill(e: OomEventC, *, symbols: KernelSymbols, single_node: bool,
             to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> BpfKill:
    """eBPF's account of one victim, with what its stack and counters say about why."""
    verdict = symbols.verdict(list(e.kstack)[: max(e.stack_bytes, 0) // 8])
    paths = _level_paths(e)
    level = oom_memcg_level(e)
    memcg = verdict.memcg if verdict.memcg is not None else level is not None
    constraint = "memcg" if memcg else ("global" if single_node else None)
    group = oom_group_level(e, level if memcg else None)
    lv = e.levels[level] if level is not None else None
    return BpfKill(
        tid=e.victim_tid, row=event_row(e, to_utc=to_utc), trigger_tid=e.trigger_tid,
        killed=verdict.killed, member=verdict.member, constraint=constraint,
        oom_memcg_path=paths[level] if memcg and level is not None else None,
        oom_memcg_usage_bytes=lv.usage_pages * PAGE_SIZE if lv is not None else None,
        oom_memcg_limit_bytes=lv.max_pages * PAGE_SIZE if lv is not None else None,
        group_path=paths[group] if group is not None else None,
    )


# -- the kernel-log half -------------------------------------------------------------


def monotonic_to_utc(ts_us: int) -> dt.datetime:
    """A kmsg timestamp (the kernel's local clock since boot, close to CLOCK_MONOTONIC) in UTC."""
    return from_kernel_clock(ts_us * 1000, time.CLOCK_MONOTONIC)


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


def pool_bytes(constraint: str | None, limit_bytes: int | None, swap_limit_bytes: int | None,
               meminfo: dict[str, int]) -> int | None:
    """The size of what the kernel chose from (oom_control.totalpages), in bytes.

    memcg: mem_cgroup_get_max(): the limit, plus the swap the cgroup may use
    (``swap_limit_bytes``: v1 memory+swap limit minus memory limit, v2 the
    swap limit; None: unlimited), never more swap than the node has. global:
    all RAM plus all swap. cpuset/mempolicy: the allowed nodes' memory,
    which nothing at hand gives.
    """
    swap_total = meminfo.get("SwapTotal", 0)
    if constraint == "global":
        return meminfo["MemTotal"] + swap_total if "MemTotal" in meminfo else None
    if constraint == "memcg" and limit_bytes is not None:
        swap = swap_total if swap_limit_bytes is None else swap_limit_bytes
        return limit_bytes + min(swap, swap_total)
    return None


def kmsg_row(kill: Kill, *, to_utc: Callable[[int], dt.datetime] = monotonic_to_utc) -> dict[str, Any]:
    """The kernel log's account of a kill, for when eBPF has none. Its pid is the task id the
    line names (the kernel prints no process id; they differ only for a thread that is not the leader)."""
    r = kill.report
    kb = kill.values_kb

    def b(key: str) -> int | None:
        return kb[key] * KB if key in kb else None

    return {
        "time": to_utc(kill.ts_us), "pid": kill.pid, "tid": kill.pid, "comm": kill.comm, "uid": kill.uid,
        "oom_score_adj": kill.oom_score_adj, "total_vm_bytes": b("total-vm"), "anon_rss_bytes": b("anon-rss"),
        "file_rss_bytes": b("file-rss"), "shmem_rss_bytes": b("shmem-rss"), "pgtables_bytes": b("pgtables"),
        "trigger_pid": r.trigger_pid if r is not None else None,
        "trigger_comm": r.trigger_comm if r is not None else None,
        "cgroup_path": r.task_memcg if r is not None and r.victim_pid == kill.pid else None,
    }


def _single_memory_node(sys_node: Path = Path("/sys/devices/system/node/has_memory")) -> bool:
    """One NUMA node with memory: then a node-wide OOM cannot be a cpuset or mempolicy one."""
    try:
        return sys_node.read_text().strip() in ("0", "")
    except OSError:
        return True  # no NUMA support at all


# -- the source ----------------------------------------------------------------------


class OomSource(Source):
    """oom_events and oom_candidates: a ring-buffer input and a kernel-log input, joined."""

    name = "oom"
    tables = (OOM_EVENTS, OOM_CANDIDATES)

    def __init__(self, ctx: SourceContext, *, join_window: float = 3.0, settle: float = 0.1,
                 hierarchy: Hierarchy | None = None, victim_from_signal: bool | None = None) -> None:
        """``victim_from_signal``: take the victim from the kernel's SIGKILL, as on kernels whose
        mark_victim passes only a pid (None: when this kernel's BTF says so; True on a kernel
        that passes the task emulates that form: tests use it, since no kernel at hand lacks it)."""
        super().__init__(ctx)
        self.join_window = join_window
        self.settle = settle
        self.victim_from_signal = victim_from_signal
        self._hierarchy = hierarchy  # the memory hierarchy, for the OOMing cgroup's state
        # Replay: a kill's row is written as soon as its log line joins it, at most join_window (3 s)
        # after eBPF's event: an edge killed meanwhile leaves the event to the next one, which drops
        # it if the row is there (the replay's 5 s cover the window).
        self.bpf = RingBufferInput("oom", OomEventC, ring="oom_events", lost_counter="oom_lost",
                                   on_event=self._on_bpf_event, status=self.status, replay=5.0)
        self.kmsg = KmsgInput(ctx.kmsg, on_kill=self._on_kill)
        self.joiner: OomJoiner | None = None
        self._backlog: list[Kill] = []  # the kernel log's backlog, read before eBPF is open
        self._drained: list[BpfKill] | None = None  # while draining eBPF's backlog
        self.boot_id = ""
        self._meminfo: dict[str, int] = {}
        self._symbols = KernelSymbols({})
        self._single_node = True
        self.bpf_error = ""
        self.kmsg_error = ""
        self.kills_by_constraint: dict[str, int] = {}  # for the edge's metrics
        # (namespace, pod, container) -> kills, for the edge's metrics: only pods that OOMed get a key
        self.kills_by_pod: dict[tuple[str, str, str], int] = {}

    # -- lifecycle ---------------------------------------------------------------

    def open(self) -> None:
        try:
            self.boot_id = (self.ctx.proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        except OSError:
            self.boot_id = "unknown"
        self._meminfo = read_meminfo(self.ctx.proc / "meminfo")
        self._single_node = _single_memory_node()
        if self._hierarchy is None:
            try:
                self._hierarchy = memory_hierarchy(self.ctx.mountinfo)
            except EdgeError as exc:
                log.info("no memory cgroup hierarchy (%s): oom_events.memcg_* columns stay empty", exc)
        # The kernel log first: everything it holds now happened before this edge watched, so it is
        # the backlog (kills the edge missed); records read after eBPF is open are live. The eBPF
        # programs outlive the edge (edge/pins.py): when this edge adopts them, their ring buffer
        # holds eBPF's account of the kills it missed, drained here and joined with the log's backlog
        # (origin bpf+kmsg). Without that account a backlog kill is written from the log alone
        # (kmsg-backlog), as are kills between reading the log and attaching freshly loaded programs.
        self.joiner = self._joiner(has_bpf=self.ctx.use_bpf, has_kmsg=True)
        self._backlog = []
        try:
            self.kmsg.open()  # reads the backlog into self._backlog
        except OSError as exc:
            self.kmsg_error = f"cannot read {self.ctx.kmsg}: {exc.strerror} (needs root or CAP_SYSLOG)"
            self.joiner.has_kmsg = False
        has_bpf = self._open_bpf()
        self.joiner.has_bpf = has_bpf
        drained: list[BpfKill] = []
        if has_bpf:
            self._drained = drained
            self.bpf.drain()  # the kills eBPF saw while no edge read them, oldest first
            self._drained = None
        self._join_backlog(drained)
        if not has_bpf and self.kmsg.fd is None:
            raise PrerequisiteError(f"{self.bpf_error}; and the kernel log is unavailable: {self.kmsg_error}")
        if not has_bpf:
            self.degrade(f"{self.bpf_error}. OOM kills come from the kernel log only: no swap, v2 cgroup or "
                         "trigger task id, and no why for kills whose report the kernel rate-limits")
        elif self.kmsg.fd is None:
            self.degrade(f"{self.kmsg_error}. OOM kills come from eBPF only: no pool size, failed allocation "
                         "or candidates, and no recovery of kills missed while the edge was down")

    def _open_bpf(self) -> bool:
        if not self.ctx.use_bpf:
            self.bpf_error = "eBPF disabled by configuration"
            return False
        try:
            kernel = self.ctx.kernel()
            args = kernel.require_hook("mark_victim", ("struct task_struct *", "uid_t"), ("int",))
            task_arg = len(args) == 2
            emulate = bool(self.victim_from_signal) and task_arg
            if not task_arg or emulate:
                kernel.require_hook("signal_generate",
                                    ("int", "struct kernel_siginfo *", "struct task_struct *", "int", "int"))
            self._symbols = KernelSymbols.load(self.ctx.proc / "kallsyms")
            self.bpf.open(kernel, {"MARK_VICTIM_TASK_ARG": int(task_arg and not emulate),
                                   "PXO_EMULATE_PID_FORM": int(emulate),
                                   "TASK_REAL_CRED": kernel.btf.offset("task_struct", "real_cred"),
                                   "CRED_UID": kernel.btf.offset("cred", "uid"),
                                   "TASK_THREAD_PID": kernel.btf.offset("task_struct", "thread_pid"),
                                   "PID_LEVEL": kernel.btf.offset("pid", "level"),
                                   "PID_NUMBERS": kernel.btf.offset("pid", "numbers"),
                                   "UPID_SIZE": kernel.btf.sizeof("upid"),
                                   "UPID_NR": kernel.btf.offset("upid", "nr")})
        except PrerequisiteError as exc:
            self.bpf_error = str(exc)
            return False
        return True

    def _join_backlog(self, drained: list[BpfKill]) -> None:
        """The kernel log's backlog, joined with what eBPF captured meanwhile (``drained``).

        A backlog kill eBPF also holds goes to the joiner as a live pair (one row, bpf+kmsg),
        unless the store already has it; the other backlog kills are the joiner's backlog
        (written from the log alone, when not yet recorded). ``drained`` may replay kills an
        earlier edge wrote (the ring buffer's replay): those are dropped."""
        assert self.joiner is not None
        drained = [k for k in drained  # replayed events of kills an earlier edge wrote
                   if not self.ctx.oom_recorded(self.boot_id, -1, k.tid, k.row["time"])]
        held = {k.tid for k in drained}
        joinable = []
        for kill in self._backlog:
            if kill.pid in held and not kill.duplicate:
                joinable.append(kill)
            else:
                self.joiner.on_kmsg(kill, backlog=True)
        recorded = {k.pid for k in joinable
                    if self.ctx.oom_recorded(self.boot_id, k.seq, k.pid, monotonic_to_utc(k.ts_us))}
        for k in drained:
            if k.tid not in recorded:
                self.joiner.on_bpf(k)
        for kill in joinable:
            if kill.pid not in recorded:
                self.joiner.on_kmsg(kill)
        self._backlog = []
        if drained:
            log.info("oom: %d kill(s) eBPF captured while no edge was reading, %d of them in the kernel log's "
                     "backlog", len(drained), len(joinable))
            self.joiner.expire()  # their log lines may still come: not forced
        else:
            self.joiner.expire(force=True)  # the backlog's rows are complete

    def _joiner(self, *, has_bpf: bool, has_kmsg: bool) -> OomJoiner:
        return OomJoiner(
            boot_id=self.boot_id, emit_row=self._emit_kill, emit_candidates=self._emit_candidates,
            memcg_state=self._memcg_state, kmsg_row=kmsg_row,
            pool=lambda c, limit, swap: pool_bytes(c, limit, swap, self._meminfo),
            recorded=self.ctx.oom_recorded, to_utc=monotonic_to_utc, has_bpf=has_bpf, has_kmsg=has_kmsg,
            join_window=self.join_window, settle=self.settle)

    def poll(self, timeout: float) -> None:
        if self.bpf.bpf is not None:
            # A short wait keeps the kernel log's side of a join as fresh as the eBPF side.
            self.bpf.poll(min(timeout, 0.05))
        elif self.kmsg.fd is not None:
            p = select.poll()
            p.register(self.kmsg.fd, select.POLLIN)
            p.poll(min(timeout, 0.05) * 1000)
        if self.kmsg.fd is not None:
            self.kmsg.read()
            self.status.lost = max(self.status.lost, self.kmsg.overwritten + self.kmsg.bad)
        assert self.joiner is not None
        self.joiner.expire()

    def close(self) -> None:
        """Write what is pending (eBPF's and the log's latest first), then let go of the inputs;
        whatever this cannot write, the next open() reads again from the kernel log's backlog."""
        try:
            if self.kmsg.fd is not None:
                self.kmsg.read()
        finally:
            try:
                self.bpf.close()  # drains what eBPF saw since the last poll into the joiner
                if self.joiner is not None:
                    self.joiner.expire(force=True)  # nothing pending is lost at shutdown
            finally:
                self.kmsg.close()

    # -- the inputs ------------------------------------------------------------------

    def _on_bpf_event(self, event: OomEventC) -> None:
        assert self.joiner is not None
        k = bpf_kill(event, symbols=self._symbols, single_node=self._single_node)
        if self._drained is not None:  # open() is draining what eBPF held: joined with the log's backlog
            self._drained.append(k)
        else:
            self.joiner.on_bpf(k)

    def _on_kill(self, kill: Kill, backlog: bool) -> None:
        assert self.joiner is not None
        if backlog:  # open() joins it with what eBPF held, once eBPF is open
            self._backlog.append(kill)
        else:
            self.joiner.on_kmsg(kill)

    # -- rows --------------------------------------------------------------------

    def _memcg_state(self, path: str) -> dict[str, Any] | None:
        """The OOMing cgroup's state, read now, milliseconds after the kill (None: removed by its runtime)."""
        return read_memcg(self._hierarchy, path) if self._hierarchy is not None else None

    def _emit_kill(self, row: dict[str, Any]) -> None:
        constraint = row.get("constraint") or "unknown"
        self.kills_by_constraint[constraint] = self.kills_by_constraint.get(constraint, 0) + 1
        attributor = getattr(self._sink, "attributor", None)  # AttributingSink: the pod's names, at the kill
        if attributor is not None and row.get("cgroup_path"):
            who = attributor.attribute(row["cgroup_path"])
            if who.get("pod"):
                key = (who.get("namespace") or "", who["pod"], who.get("container") or "")
                self.kills_by_pod[key] = self.kills_by_pod.get(key, 0) + 1
        self.emit("oom_events", row)

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
