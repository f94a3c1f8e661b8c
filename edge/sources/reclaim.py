"""Reclaim stalls from the kernel, one row per episode (bpf/reclaim.bpf.c).

The program times each direct or memory-cgroup reclaim episode between the
vmscan *_begin and *_end tracepoints, in the task that stalled, and sends one
ring-buffer event per episode with the task's memory cgroup walked in the
kernel.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import resource
from collections.abc import Callable
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.edge.bpf import (
    PXO_COMM_LEN,
    CgroupC,
    SharedStruct,
    boot_to_utc,
    cgroup_path,
    comm,
)
from pxo.edge.errors import PrerequisiteError
from pxo.edge.kernel import Kernel
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.ringbuf import RingBufferSource

log = logging.getLogger(__name__)

PAGE_SIZE = resource.getpagesize()

# RECLAIM_* in bpf/reclaim.h -> kind, and the tracepoint pair that measures it.
KINDS: dict[int, str] = {0: "direct", 1: "memcg", 2: "memcg_softlimit", 3: "node"}
_TRACEPOINTS: dict[str, str] = {
    "direct": "mm_vmscan_direct_reclaim",
    "memcg": "mm_vmscan_memcg_reclaim",
    "memcg_softlimit": "mm_vmscan_memcg_softlimit_reclaim",
    "node": "mm_vmscan_node_reclaim",
}

RECLAIM_STALLS = Table(
    "reclaim_stalls",
    "One row per reclaim episode a task stalled in, timed in the kernel between the vmscan "
    "*_reclaim_begin and *_reclaim_end tracepoints. kind: 'direct' (the node was short of free "
    "pages), 'memcg' (a memory cgroup was at its limit or memory.high), 'memcg_softlimit' "
    "(cgroup v1 soft limit, nested inside a direct episode), 'node' (NUMA zone_reclaim_mode). "
    "Background reclaim by kswapd is not a stall and is not recorded.",
    (
        TIME,  # the start of the episode
        Column("kind", "VARCHAR", "direct | memcg | memcg_softlimit | node"),
        Column("duration_ns", "UBIGINT", "How long the task was stalled reclaiming, nanoseconds"),
        Column("nr_reclaimed_pages", "UBIGINT", "Pages the episode freed"),
        Column("reclaimed_bytes", "UBIGINT", "Bytes the episode freed (nr_reclaimed_pages x page size)"),
        Column("order", "INTEGER", "Order of the allocation that entered reclaim (it wanted 2^order pages)"),
        Column("gfp_flags", "UBIGINT", "gfp mask of that allocation (include/linux/gfp_types.h)"),
        Column("pid", "INTEGER", "Process id (thread group id) of the stalled task"),
        Column("tid", "INTEGER", "Task id of the stalled task"),
        Column("comm", "VARCHAR", "Command name of the stalled task (15 characters at most)"),
        Column("cgroup_path", "VARCHAR",
               "Memory cgroup of the stalled task (v1 memory hierarchy or v2), as the kernel names it. For "
               "memcg reclaim the cgroup at its limit is this one or an ancestor (for a write to "
               "memory.reclaim or a lowered limit, the cgroup written to)"),
        Column("cgroup_id", "UBIGINT", "Inode number of that memory cgroup's directory"),
    ),
)

# -- the struct shared with bpf/reclaim.h ---------------------------------------


class ReclaimEventC(SharedStruct):
    """Mirror of struct reclaim_event: keep in sync with bpf/reclaim.h."""

    c_header = "reclaim.h"
    c_struct = "reclaim_event"
    _fields_ = [
        ("start_boot_ns", ctypes.c_uint64),
        ("duration_ns", ctypes.c_uint64),
        ("nr_reclaimed", ctypes.c_uint64),
        ("gfp_flags", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("kind", ctypes.c_uint32),
        ("comm", ctypes.c_char * PXO_COMM_LEN),
        ("memcg", CgroupC),
    ]


def event_row(e: ReclaimEventC, *, to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> dict[str, Any]:
    """One reclaim_stalls row from the kernel's event: pages become bytes here."""
    return {
        "time": to_utc(e.start_boot_ns),
        "kind": KINDS.get(e.kind, f"kind{e.kind}"),
        "duration_ns": e.duration_ns,
        "nr_reclaimed_pages": e.nr_reclaimed,
        "reclaimed_bytes": e.nr_reclaimed * PAGE_SIZE,
        "order": e.order,
        "gfp_flags": e.gfp_flags,
        "pid": e.tgid,
        "tid": e.tid,
        "comm": comm(e.comm),
        "cgroup_path": cgroup_path(e.memcg),
        "cgroup_id": e.memcg.id or None,
    }


def pair_arguments(begin: tuple[str, ...] | None, end: tuple[str, ...] | None) -> dict[str, int] | None:
    """Where a begin/end pair of raw tracepoints passes order, gfp flags and nr_reclaimed
    ({"ORDER": i, "GFP": j, "NR": k}), given what each passes (Kernel.hook); None when the
    kernel lacks the pair, ValueError when they are not where pxo can find them.

    From the kernel's BTF, whose typedefs give types, not names: the order is
    the int next to the gfp_t of _begin (before it: (int order, gfp_t) up to
    7.1, (int nid, int order, gfp_t) for node reclaim; after it: (gfp_t, int
    order, struct mem_cgroup *) from 7.2), and nr_reclaimed the first
    unsigned long of _end.
    """
    if begin is None or end is None:
        return None
    gfp = begin.index("gfp_t") if "gfp_t" in begin else -1
    order = next((i for i in (gfp - 1, gfp + 1) if gfp >= 0 and 0 <= i < len(begin) and begin[i] == "int"), -1)
    if order < 0 or "long unsigned int" not in end:
        raise ValueError(f"({', '.join(begin)}) and ({', '.join(end)}): no (order, gfp_flags) and nr_reclaimed")
    return {"ORDER": order, "GFP": gfp, "NR": end.index("long unsigned int")}


class ReclaimBpfSource(RingBufferSource):
    """Loads bpf/reclaim.bpf.c and turns its ring buffer into reclaim_stalls rows."""

    name = "reclaim_bpf"
    tables = (RECLAIM_STALLS,)
    program, event, ring, lost_counter, table = (
        "reclaim", ReclaimEventC, "reclaim_events", "reclaim_lost", "reclaim_stalls")

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self.kinds: tuple[str, ...] = ()  # the kinds this kernel lets us measure (set by open)

    def settings(self, kernel: Kernel) -> dict[str, int]:
        flags: dict[str, int] = {}
        kinds = []
        for kind, event in _TRACEPOINTS.items():
            try:
                where = pair_arguments(kernel.hook(f"{event}_begin"), kernel.hook(f"{event}_end"))
            except ValueError as exc:
                raise PrerequisiteError(f"kernel {kernel.release}'s {event}_begin/_end pass {exc} where pxo "
                                        "expects them") from None
            if where is None and kind == "direct":
                kernel.require_hook("mm_vmscan_direct_reclaim_begin")  # refuses, naming it
                kernel.require_hook("mm_vmscan_direct_reclaim_end")
            flags[f"HAVE_{kind.upper()}"] = int(where is not None)
            for arg, index in (where or {}).items():
                flags[f"{kind.upper()}_{arg}_ARG"] = index
            if where is not None:
                kinds.append(kind)
        self.kinds = tuple(kinds)
        if "memcg" not in self.kinds:
            log.warning("reclaim_stalls: kernel %s has no memcg reclaim tracepoints; direct reclaim only",
                        kernel.release)
        return flags

    def row(self, event: ReclaimEventC) -> dict[str, Any]:
        return event_row(event)
