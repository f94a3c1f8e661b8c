"""OOM kills from the kernel, one row per killed task (bpf/oom.bpf.c).

The program hooks the raw tracepoint oom:mark_victim and reads the victim's
task_struct with member offsets taken from the running kernel's BTF
(edge/btf.py), so a header tree from another kernel cannot skew them.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import resource
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
    """One oom_events row from the kernel's event: pages become bytes here."""
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
        require_tracepoint("oom", "mark_victim", field="uid")  # the (task, uid) form of Linux 6.9+
        self._bpf = load_program("oom", settings={"OOM_EVENT_SIZE": ctypes.sizeof(OomEventC)},
                                 btf_path=self._btf_path)
        self._bpf["oom_events"].open_ring_buffer(self._on_event)

    def _on_event(self, _ctx: Any, data: int, size: int) -> None:
        if size < ctypes.sizeof(OomEventC):
            self.status.lost += 1
            return
        self.emit("oom_events", event_row(OomEventC.from_address(data)))

    def poll(self, timeout: float) -> None:
        self._bpf.ring_buffer_poll(int(timeout * 1000))
        self.status.lost = max(self.status.lost, read_counter(self._bpf, "oom_lost"))

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
