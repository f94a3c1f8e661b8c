"""Process exits with their exit status or killing signal, one row per process (bpf/exit.bpf.c).

The program hooks the raw tracepoint sched:sched_process_exit and reports a
user-space process when its last thread exits (the tracepoint's group_dead),
with the wait status its parent will see. Paired with oom_events and
kill_events it answers "how did this process end": exit_status for a normal
exit, signal 9 plus an oom_events row for an OOM kill, signal 9 plus a
kill_events row for a kill from user space.

Exits are frequent, so the kernel walks only the memory cgroup's path (the
one the attribution enricher keys on, and the one that must be walked at
once because runtimes remove dead containers' cgroups). The v2 path is the
same record when memory lives on the unified hierarchy (most Kubernetes
nodes), "/" when the process is in the unified hierarchy's root (nothing
uses it, and it may not even be mounted), and otherwise it is resolved here
from the v2 cgroup id, which misses a cgroup removed before the resolver
ever saw it.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
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
)
from pxo.edge.cgroups import CgroupResolver, hierarchies
from pxo.edge.errors import PrerequisiteError
from pxo.edge.kernel import Kernel
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.ringbuf import RingBufferSource

log = logging.getLogger(__name__)

PROCESS_EXITS = Table(
    "process_exits",
    "One row per user-space process that exited (when its last thread exits), "
    "with the exit status or signal its parent sees; kernel threads are not included.",
    (
        TIME,
        Column("pid", "INTEGER", "Process id (thread group id)"),
        Column("tid", "INTEGER", "Thread that exited last, ending the process"),
        Column("comm", "VARCHAR", "Process command name, the main thread's (15 characters at most)"),
        Column("ppid", "INTEGER", "Parent process id at exit, before any reparenting"),
        Column("exit_status", "SMALLINT", "Exit status passed to exit() (0-255); 0 when killed by a signal"),
        Column("signal", "SMALLINT", "Signal that killed the process (9 for SIGKILL, OOM kills included); 0 if none"),
        Column("core_dumped", "BOOLEAN", "The killing signal dumped core"),
        Column("cgroup_path", "VARCHAR", "Process's memory cgroup (v1 memory hierarchy or v2), as the kernel names it"),
        Column("cgroup_id", "UBIGINT", "Inode number of the process's memory cgroup directory"),
        Column("cgroup_v2_path", "VARCHAR", "Process's cgroup in the unified (v2) hierarchy"),
    ),
)

# -- the struct shared with bpf/exit.h ------------------------------------------


class ExitEventC(SharedStruct):
    """Mirror of struct exit_event: keep in sync with bpf/exit.h."""

    c_header = "exit.h"
    c_struct = "exit_event"
    _fields_ = [
        ("boot_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("exit_code", ctypes.c_uint32),
        ("cgroup_v2_id", ctypes.c_uint64),
        ("v2_is_memcg", ctypes.c_uint32),
        ("v2_is_root", ctypes.c_uint32),
        ("comm", ctypes.c_char * PXO_COMM_LEN),
        ("memcg", CgroupC),
    ]


def decode_wait_status(code: int) -> tuple[int, int, bool]:
    """(exit_status, signal, core_dumped) from a raw wait status, as WEXITSTATUS/WTERMSIG/WCOREDUMP do."""
    return (code >> 8) & 0xFF, code & 0x7F, bool(code & 0x80)


def event_row(e: ExitEventC, *, v2_path: Callable[[int], str | None] = lambda _id: None,
              to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> dict[str, Any]:
    """One process_exits row from the kernel's event; ``v2_path`` resolves a v2 cgroup id."""
    exit_status, sig, core = decode_wait_status(e.exit_code)
    memcg_path = cgroup_path(e.memcg)
    if e.v2_is_memcg:
        v2 = memcg_path
    elif e.v2_is_root and e.cgroup_v2_id:
        v2 = "/"
    else:
        v2 = v2_path(e.cgroup_v2_id)
    return {
        "time": to_utc(e.boot_ns),
        "pid": e.tgid,
        "tid": e.tid,
        "comm": comm(e.comm),
        "ppid": e.ppid,
        "exit_status": exit_status,
        "signal": sig,
        "core_dumped": core,
        "cgroup_path": memcg_path,
        "cgroup_id": e.memcg.id or None,
        "cgroup_v2_path": v2,
    }


def default_v2_resolver(mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupResolver | None:
    """A resolver over the mounted unified (v2) hierarchy, or None when none is mounted."""
    for h in hierarchies(mountinfo):
        if h.version == 2:
            return CgroupResolver(h)
    return None


class ProcessExitBpfSource(RingBufferSource):
    """Loads bpf/exit.bpf.c and turns its ring buffer into process_exits rows."""

    name = "exit_bpf"
    tables = (PROCESS_EXITS,)
    program, event, ring, lost_counter, table = "exit", ExitEventC, "exit_events", "exit_lost", "process_exits"

    def __init__(self, ctx: SourceContext, *, v2_resolver: CgroupResolver | None = None,
                 group_dead: bool | None = None) -> None:
        """``group_dead``: use the tracepoint's group_dead argument (None: when this kernel passes it;
        False on a kernel that has it makes the program tell the last thread as older kernels need)."""
        super().__init__(ctx)
        self._v2 = v2_resolver
        self.group_dead = group_dead

    def settings(self, kernel: Kernel) -> dict[str, int]:
        args = kernel.require_hook("sched_process_exit", ("struct task_struct *", "bool"),
                                   ("struct task_struct *",))
        if self.group_dead is None:
            self.group_dead = len(args) == 2
        elif self.group_dead and len(args) != 2:
            raise PrerequisiteError(f"kernel {kernel.release}'s sched_process_exit passes no group_dead")
        if self._v2 is None:
            self._v2 = default_v2_resolver(self.ctx.mountinfo)
            if self._v2 is None:
                log.info("no cgroup v2 hierarchy is mounted: process_exits.cgroup_v2_path stays empty")
        return {"HAVE_GROUP_DEAD": int(self.group_dead)}

    def _v2_path(self, cgroup_id: int) -> str | None:
        return self._v2.path(cgroup_id) if self._v2 is not None else None

    def row(self, event: ExitEventC) -> dict[str, Any]:
        return event_row(event, v2_path=self._v2_path)
