"""SIGKILLs sent from user space, one row per signal (bpf/signal.bpf.c).

The program hooks the raw tracepoint signal:signal_generate and keeps only
SIGKILL with si_code <= 0: kill(), tgkill(), sigqueue(), pidfd_send_signal()
and cgroup.kill writes. The kernel's own kills (the OOM killer's among them,
which oom_events records) carry SI_KERNEL and never appear here, so
kill_events answers "who killed this process" when no OOM did.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
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
from pxo.edge.kernel import Kernel
from pxo.edge.sources.ringbuf import RingBufferSource

log = logging.getLogger(__name__)

KILL_EVENTS = Table(
    "kill_events",
    "One row per SIGKILL sent from user space (kill, tgkill, sigqueue, pidfd_send_signal, "
    "cgroup.kill); the kernel's own kills, the OOM killer's included, are not here.",
    (
        TIME,
        Column("signal", "INTEGER", "Signal number: always 9 (SIGKILL)"),
        Column("si_code", "INTEGER",
               "How it was sent: 0 kill(), pidfd_send_signal() or cgroup.kill; -6 tgkill(); -1 sigqueue()"),
        Column("sender_pid", "INTEGER", "Sending process id (thread group id)"),
        Column("sender_tid", "INTEGER", "Sending task id"),
        Column("sender_comm", "VARCHAR", "Sending thread's command name (15 characters at most)"),
        Column("sender_cgroup_path", "VARCHAR", "Sender's memory cgroup, as the kernel names it"),
        Column("target_pid", "INTEGER", "Process the signal was sent to (thread group id)"),
        Column("target_tid", "INTEGER", "Task the kernel queued the signal on"),
        Column("target_comm", "VARCHAR", "Target task's command name (15 characters at most)"),
        Column("cgroup_path", "VARCHAR",
               "Target's memory cgroup (v1 memory hierarchy or v2), as the kernel names it"),
        Column("cgroup_id", "UBIGINT", "Inode number of the target's memory cgroup directory"),
        Column("cgroup_v2_path", "VARCHAR", "Target's cgroup in the unified (v2) hierarchy"),
        Column("whole_process", "BOOLEAN", "Sent to the whole process (kill) rather than one thread (tgkill)"),
        Column("result", "INTEGER",
               "Kernel's outcome: 0 delivered, 1 ignored (target already exiting), 2 already pending"),
    ),
    urgent=True,
)

# -- the struct shared with bpf/signal.h ----------------------------------------


class KillEventC(SharedStruct):
    """Mirror of struct kill_event: keep in sync with bpf/signal.h."""

    c_header = "signal.h"
    c_struct = "kill_event"
    _fields_ = [
        ("boot_ns", ctypes.c_uint64),
        ("sender_tgid", ctypes.c_uint32),
        ("sender_tid", ctypes.c_uint32),
        ("target_tgid", ctypes.c_uint32),
        ("target_tid", ctypes.c_uint32),
        ("sig", ctypes.c_int32),
        ("si_code", ctypes.c_int32),
        ("group", ctypes.c_int32),
        ("result", ctypes.c_int32),
        ("sender_comm", ctypes.c_char * PXO_COMM_LEN),
        ("target_comm", ctypes.c_char * PXO_COMM_LEN),
        ("sender_memcg", CgroupC),
        ("target_memcg", CgroupC),
        ("target_cgroup_v2", CgroupC),
    ]


def event_row(e: KillEventC, *, to_utc: Callable[[int], dt.datetime] = boot_to_utc) -> dict[str, Any]:
    """One kill_events row from the kernel's event."""
    return {
        "time": to_utc(e.boot_ns),
        "signal": e.sig,
        "si_code": e.si_code,
        "sender_pid": e.sender_tgid,
        "sender_tid": e.sender_tid,
        "sender_comm": comm(e.sender_comm),
        "sender_cgroup_path": cgroup_path(e.sender_memcg),
        "target_pid": e.target_tgid,
        "target_tid": e.target_tid,
        "target_comm": comm(e.target_comm),
        "cgroup_path": cgroup_path(e.target_memcg),
        "cgroup_id": e.target_memcg.id or None,
        "cgroup_v2_path": cgroup_path(e.target_cgroup_v2),
        "whole_process": bool(e.group),
        "result": e.result,
    }


class KillBpfSource(RingBufferSource):
    """Loads bpf/signal.bpf.c and turns its ring buffer into kill_events rows."""

    name = "kill_bpf"
    tables = (KILL_EVENTS,)
    program, event, ring, lost_counter, table = "signal", KillEventC, "kill_events", "kill_lost", "kill_events"

    def settings(self, kernel: Kernel) -> dict[str, int]:
        # The (sig, info, task, group, result) form the program reads (Linux 4.20 on).
        kernel.require_hook("signal_generate",
                            ("int", "struct kernel_siginfo *", "struct task_struct *", "int", "int"))
        return {}

    def row(self, event: KillEventC) -> dict[str, Any]:
        return event_row(event)
