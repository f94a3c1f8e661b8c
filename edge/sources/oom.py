"""OOM kills from the kernel, one row per killed task (bpf/oom.bpf.c).

The program hooks the raw tracepoint oom:mark_victim and reads the victim's
task_struct with member offsets taken from the running kernel's BTF
(edge/btf.py), so a header tree from another kernel cannot skew them.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pxo.bpf
from pxo.common.schema import TIME, Column, Table
from pxo.edge import prereqs
from pxo.edge.btf import VMLINUX, Btf, BtfError
from pxo.edge.errors import PrerequisiteError
from pxo.edge.sources.base import Sink, Source

log = logging.getLogger(__name__)

PAGE_SIZE = resource.getpagesize()

OOM_EVENTS = Table(
    "oom_events",
    "One row per task the kernel's OOM killer killed (group-kill members included), "
    "attributed to the victim's own cgroups.",
    (
        TIME,
        Column("pid", "INTEGER", "Victim process id (thread group id)"),
        Column("tid", "INTEGER", "Victim task id the kernel marked"),
        Column("comm", "VARCHAR", "Victim command name (15 characters at most)"),
        Column("uid", "UBIGINT", "Victim's user id in the initial user namespace"),
        Column("oom_score_adj", "SMALLINT", "Victim's oom_score_adj (-1000..1000)"),
        Column("total_vm_bytes", "UBIGINT", "Victim's virtual memory size, bytes"),
        Column("anon_rss_bytes", "UBIGINT", "Victim's resident anonymous memory, bytes"),
        Column("file_rss_bytes", "UBIGINT", "Victim's resident file-backed memory, bytes"),
        Column("shmem_rss_bytes", "UBIGINT", "Victim's resident shared memory, bytes"),
        Column("swap_bytes", "UBIGINT", "Victim's swapped-out memory, bytes"),
        Column("pgtables_bytes", "UBIGINT", "Victim's page tables, bytes"),
        Column("trigger_pid", "INTEGER", "Process whose allocation invoked the OOM killer"),
        Column("trigger_tid", "INTEGER", "Task whose allocation invoked the OOM killer"),
        Column("trigger_comm", "VARCHAR", "Command name of the triggering task"),
        Column("cgroup_path", "VARCHAR",
               "Victim's memory cgroup (v1 memory hierarchy or v2), as the kernel names it"),
        Column("cgroup_id", "UBIGINT", "Inode number of the victim's memory cgroup directory"),
        Column("cgroup_v2_path", "VARCHAR", "Victim's cgroup in the unified (v2) hierarchy"),
        Column("cgroup_v2_id", "UBIGINT", "Inode number of the victim's v2 cgroup directory"),
    ),
)

# -- the struct shared with bpf/oom.h -------------------------------------------
# Keep in sync with bpf/oom.h; tests/edge/test_oom_bpf.py compares layouts.
OOM_COMM_LEN = 16
OOM_PATH_DEPTH = 16
OOM_NAME_LEN = 128


class OomCgroupC(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("depth", ctypes.c_uint32),
        ("truncated", ctypes.c_uint32),
        ("names", (ctypes.c_char * OOM_NAME_LEN) * OOM_PATH_DEPTH),
    ]


class OomEventC(ctypes.Structure):
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
        ("victim_comm", ctypes.c_char * OOM_COMM_LEN),
        ("trigger_comm", ctypes.c_char * OOM_COMM_LEN),
        ("memcg", OomCgroupC),
        ("cgroup_v2", OomCgroupC),
    ]


def cgroup_path(cg: OomCgroupC) -> str | None:
    """'/a/b/c' from the leaf-first names the kernel walk recorded; None when unknown."""
    if cg.id == 0:
        return None
    names = [bytes(cg.names[i].value).decode("utf-8", "replace") for i in range(cg.depth)]
    path = "/" + "/".join(reversed(names))
    return "/..." + path if cg.truncated else path


def bpf_offsets(btf: Btf) -> dict[str, int]:
    """Every -D value bpf/oom.bpf.c needs, from the running kernel's BTF."""
    counter_type, _n = btf.array_member("mm_struct", "rss_stat")
    if counter_type == "percpu_counter":  # kernel >= 6.2
        counter_size = btf.sizeof("percpu_counter")
        counter_count = btf.offset("percpu_counter", "count")
        rss_stat = btf.offset("mm_struct", "rss_stat")
    else:  # older kernels: struct mm_rss_stat { atomic_long_t count[]; }
        counter_size, counter_count = 8, 0
        rss_stat = btf.offset("mm_struct", "rss_stat") + btf.offset("mm_rss_stat", "count")
    parent = "__parent" if btf.has_member("kernfs_node", "__parent") else "parent"
    memory_id = (
        btf.enum_value("cgroup_subsys_id", "memory_cgrp_id")
        if btf.has_enumerator("memory_cgrp_id")
        else -1
    )
    return {
        "TASK_PID": btf.offset("task_struct", "pid"),
        "TASK_TGID": btf.offset("task_struct", "tgid"),
        "TASK_COMM": btf.offset("task_struct", "comm"),
        "TASK_MM": btf.offset("task_struct", "mm"),
        "TASK_SIGNAL": btf.offset("task_struct", "signal"),
        "TASK_CGROUPS": btf.offset("task_struct", "cgroups"),
        "SIGNAL_OOM_SCORE_ADJ": btf.offset("signal_struct", "oom_score_adj"),
        "MM_TOTAL_VM": btf.offset("mm_struct", "total_vm"),
        "MM_PGTABLES_BYTES": btf.offset("mm_struct", "pgtables_bytes"),
        "MM_RSS_STAT": rss_stat,
        "RSS_COUNTER_SIZE": counter_size,
        "RSS_COUNTER_COUNT": counter_count,
        "MM_FILEPAGES": btf.enumerator("MM_FILEPAGES"),
        "MM_ANONPAGES": btf.enumerator("MM_ANONPAGES"),
        "MM_SWAPENTS": btf.enumerator("MM_SWAPENTS"),
        "MM_SHMEMPAGES": btf.enumerator("MM_SHMEMPAGES"),
        "CSS_SET_DFL_CGRP": btf.offset("css_set", "dfl_cgrp"),
        "CSS_SET_SUBSYS": btf.offset("css_set", "subsys"),
        "CSS_CGROUP": btf.offset("cgroup_subsys_state", "cgroup"),
        "CGROUP_KN": btf.offset("cgroup", "kn"),
        "KERNFS_NODE_ID": btf.offset("kernfs_node", "id"),
        "KERNFS_NODE_NAME": btf.offset("kernfs_node", "name"),
        "KERNFS_NODE_PARENT": btf.offset("kernfs_node", parent),
        "MEMORY_CGRP_ID": memory_id,
    }


def bpf_dir() -> Path:
    """Where bpf/*.bpf.c and their headers are (the pxo.bpf data package)."""
    for p in pxo.bpf.__path__:
        if (Path(p) / "oom.bpf.c").is_file():
            return Path(p)
    raise PrerequisiteError("pxo's BPF sources (oom.bpf.c) are not installed with the package")


def boot_to_utc(boot_ns: int) -> dt.datetime:
    """Convert a bpf_ktime_get_boot_ns() stamp to UTC using the clocks as they are now."""
    now_real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    now_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    unix_ns = now_real - (now_boot - boot_ns)
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=unix_ns // 1000)


def event_row(e: OomEventC, *, to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> dict[str, Any]:
    """One oom_events row from the kernel's event: pages become bytes here."""
    return {
        "time": to_utc(e.boot_ns),
        "pid": e.victim_tgid,
        "tid": e.victim_tid,
        "comm": e.victim_comm.decode("utf-8", "replace"),
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
        "trigger_comm": e.trigger_comm.decode("utf-8", "replace"),
        "cgroup_path": cgroup_path(e.memcg),
        "cgroup_id": e.memcg.id or None,
        "cgroup_v2_path": cgroup_path(e.cgroup_v2),
        "cgroup_v2_id": e.cgroup_v2.id or None,
    }


class OomBpfSource(Source):
    """Loads bpf/oom.bpf.c and turns its ring buffer into oom_events rows."""

    name = "oom_bpf"
    tables = (OOM_EVENTS,)

    def __init__(self, *, sink: Sink, btf_path: Path = VMLINUX, **kwargs: Any) -> None:
        super().__init__(sink=sink, **kwargs)
        self._btf_path = btf_path
        self._bpf: Any = None

    def open(self) -> None:
        prereqs.require_bpf(btf_path=self._btf_path)
        fmt = prereqs.tracepoint_format("oom", "mark_victim")
        if fmt is None or "comm" not in fmt:
            raise PrerequisiteError(
                f"kernel {platform.release()} lacks the oom:mark_victim tracepoint with the "
                "victim's task (Linux 6.9 or newer is needed for the eBPF OOM source)"
            )
        try:
            offsets = bpf_offsets(Btf.load(self._btf_path))
        except BtfError as exc:
            raise PrerequisiteError(f"cannot take struct offsets from BTF: {exc}") from exc
        from bcc import BPF  # heavy, and only the edge needs it

        src = bpf_dir()
        offsets["OOM_EVENT_SIZE"] = ctypes.sizeof(OomEventC)
        cflags = [f"-D{k}={v}" for k, v in offsets.items()] + [f"-I{src}"]
        try:
            self._bpf = BPF(src_file=str(src / "oom.bpf.c"), cflags=cflags)
        except Exception as exc:  # bcc raises plain Exception on compile/load failure
            raise PrerequisiteError(f"the kernel refused bpf/oom.bpf.c: {exc}") from exc
        self._bpf["oom_events"].open_ring_buffer(self._on_event)
        log.info("oom: raw tracepoint mark_victim attached (offsets from %s)", self._btf_path)

    def _on_event(self, _ctx: Any, data: int, size: int) -> None:
        if size < ctypes.sizeof(OomEventC):
            self.status.lost += 1
            return
        event = OomEventC.from_address(data)
        self.emit("oom_events", event_row(event))

    def poll(self, timeout: float) -> None:
        self._bpf.ring_buffer_poll(int(timeout * 1000))
        lost = self._bpf["oom_lost"][ctypes.c_int(0)].value
        self.status.lost = max(self.status.lost, lost)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


