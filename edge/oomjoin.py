"""Joining the two accounts of each OOM kill into one row per killed task.

Inputs (edge/sources/oom.py wires them):
- ``BpfKill``: bpf/oom.bpf.c's event, one per task marked as a victim, with
  what can be read only at the kill (the victim's memory, its cgroups, the
  cgroup counters, and the verdicts of the kernel stack).
- ``Kill``: a "Killed process" line of the kernel log (edge/kmsg.py), with
  the report that explains it when the kernel printed one.

The two are joined by task id. A kill eBPF saw waits ``join_window``
seconds for its log line (3 s: on 7.2 under two qemu guests sharing 2 cores,
a burst of 24 kills had log lines come more than the 1 s it used to be after
their eBPF events, and those rows lost the report's account). A log line waits for eBPF's event until eBPF has
delivered an event of a later kill (the ring buffer is in order, and a kill's
eBPF event comes before its log line: if a later one arrived, this one was
lost) or ``bpf_wait`` seconds passed: a record the kernel has reserved but not
yet submitted holds back every record behind it, and on a loaded preemptible
kernel (seen on 7.2) that can take a second or more. Kills are
grouped into **invocations** of the OOM killer: the chosen victim, and the
members of its memory.oom.group if the kernel killed a whole group. Every row
of an invocation gets the same ``oom_id``, why (constraint, the cgroup that
ran out), and one reading of that cgroup's state: an invocation is written
when all its rows are joined (or their window passed) and no new member has
come for ``settle`` seconds. The kernel log's second line for a group's
chosen victim is dropped, so a group of N tasks is N rows.

Which account wins where both speak: the report (printed at the kill) for
constraint, the OOMing cgroup, usage and limit; eBPF for the victim's memory
and cgroups (walked in the kernel, exact even when a runtime removes the
cgroup a moment later); eBPF's reading of the cgroup counters when the
report was rate-limited.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pxo.common.timeutil import to_unix_us
from pxo.edge.kmsg import Kill, OomReport

log = logging.getLogger(__name__)

KB = 1024
# eBPF stamps with the boot clock, the kernel log with local_clock() (sched_clock): converted to
# UTC they drift apart by tens of milliseconds (31 ms seen in a 7.2 guest). A later kill must be
# later by more than that to prove eBPF is past this one.
_ORDER_SLACK = dt.timedelta(seconds=1)


@dataclass
class BpfKill:
    """eBPF's account of one victim, decoded (edge/sources/oom.py: bpf_kill)."""

    tid: int  # the join key: the kernel log's "Killed process N" is the task id
    row: dict[str, Any]  # the oom_events columns eBPF fills
    trigger_tid: int
    killed: bool | None = None  # False: marked because it was already exiting, not killed
    member: bool | None = None  # killed as a member of a memory.oom.group kill
    constraint: str | None = None  # inferred: memcg or global (None: cannot tell)
    oom_memcg_path: str | None = None  # inferred: the cgroup whose limit was hit
    oom_memcg_usage_bytes: int | None = None  # its usage and limit at the kill, from its page counter
    oom_memcg_limit_bytes: int | None = None
    group_path: str | None = None  # inferred: the memory.oom.group cgroup the kernel kills whole


@dataclass
class _Victim:
    bpf: BpfKill | None = None
    kill: Kill | None = None
    deadline: float = 0.0  # until when the missing account is awaited

    @property
    def joined(self) -> bool:
        return self.bpf is not None and self.kill is not None


@dataclass
class _Invocation:
    trigger_tid: int | None
    last_event: float
    backlog: bool = False
    victims: list[_Victim] = field(default_factory=list)
    # The OOMing cgroup's state, read at the first event: runtimes remove a dead
    # container's cgroup within milliseconds, so waiting for the end may find nothing.
    state_path: str | None = None
    state: dict[str, Any] | None = None


# (oom_id, report, when) -> emit that report's candidate table
CandidatesSink = Callable[[OomReport, str, dt.datetime], None]


class OomJoiner:
    """Turns the two inputs into oom_events rows (``emit_row``) and candidate tables (``emit_candidates``).

    ``memcg_state(path)``: the OOMing cgroup's container_memory columns, read
    once per invocation (None: gone); ``kmsg_row(kill)``: the kernel log's
    account as a row; ``pool(constraint, limit, swap_limit)``: the pool size.
    ``has_bpf``/``has_kmsg``: which inputs run (a row waits only for an input
    that can come).
    """

    def __init__(self, *, boot_id: str, emit_row: Callable[[dict[str, Any]], None],
                 emit_candidates: CandidatesSink,
                 memcg_state: Callable[[str], dict[str, Any] | None],
                 kmsg_row: Callable[[Kill], dict[str, Any]],
                 pool: Callable[[str | None, int | None, int | None], int | None],
                 recorded: Callable[[str, int, int, dt.datetime], bool],
                 to_utc: Callable[[int], dt.datetime],
                 has_bpf: bool, has_kmsg: bool, join_window: float = 3.0, bpf_wait: float = 10.0,
                 settle: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.boot_id = boot_id
        self._emit_row = emit_row
        self._emit_candidates = emit_candidates
        self._memcg_state = memcg_state
        self._kmsg_row = kmsg_row
        self._pool = pool
        self._recorded = recorded
        self._to_utc = to_utc
        self.has_bpf, self.has_kmsg = has_bpf, has_kmsg
        self.join_window, self.bpf_wait, self.settle = join_window, bpf_wait, settle
        self._clock = clock
        self._open: list[_Invocation] = []
        self._waiting_kmsg: dict[int, _Victim] = {}  # tid -> a victim eBPF saw, its log line still to come
        self._waiting_bpf: dict[int, tuple[float, Kill]] = {}  # tid -> a log line (and when it came), its eBPF
        self._bpf_latest: dt.datetime | None = None  # the time of the newest kill eBPF has delivered
        self._reports_emitted: set[int] = set()
        # tid -> when its row was written: an account of it that comes later still is not a new kill
        self._written: dict[int, float] = {}
        self.late = 0  # accounts that came after their kill's row was written (dropped)
        self.not_killed = 0  # tasks marked as victims because they were already exiting (nothing killed)

    # -- inputs ----------------------------------------------------------------

    def on_bpf(self, k: BpfKill) -> None:
        now = self._clock()
        if k.killed is False:
            self.not_killed += 1
            return
        if self._already_written(k.tid, now):
            return
        when = k.row.get("time")
        if when is not None and (self._bpf_latest is None or when > self._bpf_latest):
            self._bpf_latest = when
        inv = self._invocation_for(k, now)
        if inv.state_path is None:
            inv.state_path = k.oom_memcg_path or k.row.get("cgroup_path")
            inv.state = self._memcg_state(inv.state_path) if inv.state_path else None
        v = _Victim(bpf=k, deadline=now + self.join_window if self.has_kmsg else now)
        waiting = self._waiting_bpf.pop(k.tid, None)
        if waiting is not None:
            v.kill = waiting[1]
        elif self.has_kmsg:
            self._waiting_kmsg[k.tid] = v
        inv.victims.append(v)
        inv.last_event = now

    def on_kmsg(self, kill: Kill, *, backlog: bool = False) -> None:
        now = self._clock()
        if backlog:
            if not kill.duplicate and not self._recorded(self.boot_id, kill.seq, kill.pid,
                                                         self._to_utc(kill.ts_us)):
                self._add_kmsg_only(kill, now, backlog=True)
            return
        if kill.duplicate:
            return  # the kernel's second line for a group kill's chosen victim
        if self._already_written(kill.pid, now):
            return
        v = self._waiting_kmsg.pop(kill.pid, None)
        if v is not None:
            v.kill = kill
            return
        if not self.has_bpf:
            self._add_kmsg_only(kill, now)
        else:  # eBPF's event may still be in its ring buffer
            self._waiting_bpf[kill.pid] = (now, kill)

    def expire(self, now: float | None = None, *, force: bool = False) -> None:
        """Give up waiting where the window passed; write the invocations that are complete.
        ``force``: write everything now (the edge is stopping, or the backlog is read)."""
        now = self._clock() if now is None else now
        for tid, (arrived, kill) in list(self._waiting_bpf.items()):
            passed = self._bpf_latest is not None and self._bpf_latest > self._to_utc(kill.ts_us) + _ORDER_SLACK
            if force or passed or now - arrived >= self.bpf_wait:  # eBPF lost it (a full ring buffer, say)
                del self._waiting_bpf[tid]
                self._add_kmsg_only(kill, arrived)
        for inv in list(self._open):
            pending = any(not v.joined and v.deadline > now for v in inv.victims)
            if force or (not pending and now - inv.last_event >= self.settle):
                self._open.remove(inv)
                for v in inv.victims:
                    if v.bpf is not None:
                        self._waiting_kmsg.pop(v.bpf.tid, None)
                self._write(inv)

    def _already_written(self, tid: int, now: float) -> bool:
        """Was this task's kill written in the last minute? (Its other account came too late to be
        joined; one row per kill matters more. Task ids are not reused within a minute.)"""
        if len(self._written) > 4096:
            self._written = {t: at for t, at in self._written.items() if now - at < 60}
        at = self._written.get(tid)
        if at is not None and now - at < 60:
            self.late += 1
            log.info("the other account of task %d's OOM kill came %.1f s after its row was written", tid, now - at)
            return True
        return False

    # -- grouping --------------------------------------------------------------

    def _invocation_for(self, k: BpfKill, now: float) -> _Invocation:
        current = next((inv for inv in reversed(self._open)
                        if not inv.backlog and inv.trigger_tid == k.trigger_tid), None)
        member = k.member
        if member is None and current is not None:  # the stack could not tell: by the group's cgroup
            group = next((v.bpf.group_path for v in current.victims if v.bpf and v.bpf.group_path), None)
            path = k.row.get("cgroup_path") or ""
            member = group is not None and (path == group or path.startswith(group.rstrip("/") + "/")) \
                and now - current.last_event < 1.0
        if member and current is not None:
            return current
        inv = _Invocation(k.trigger_tid, now)
        self._open.append(inv)
        return inv

    def _add_kmsg_only(self, kill: Kill, now: float, *, backlog: bool = False) -> None:
        current = self._open[-1] if self._open else None
        if kill.chosen or current is None or current.backlog != backlog:
            current = _Invocation(None, now, backlog=backlog)
            self._open.append(current)
        current.victims.append(_Victim(kill=kill, deadline=now))
        current.last_event = now

    # -- output ----------------------------------------------------------------

    def _write(self, inv: _Invocation) -> None:
        chosen = inv.victims[0]
        report = next((v.kill.report for v in inv.victims if v.kill is not None and v.kill.report is not None),
                      None)
        if chosen.kill is not None:
            oom_id = f"{self.boot_id}:{report.seq if report is not None else chosen.kill.seq}"
        else:
            assert chosen.bpf is not None
            oom_id = f"{self.boot_id}:bpf-{to_unix_us(chosen.bpf.row['time'])}"
        first = chosen.bpf
        # Why, for the whole invocation: the report when the kernel printed one, else eBPF's reading.
        constraint = report.constraint if report is not None and report.constraint else (
            first.constraint if first is not None else None)
        if report is not None and report.constraint:
            oom_memcg = report.oom_memcg
        else:
            oom_memcg = first.oom_memcg_path if first is not None and constraint == "memcg" else None
        group = next((v.kill.group_cgroup for v in inv.victims if v.kill is not None and v.kill.group_cgroup),
                     None) or next((v.bpf.group_path for v in inv.victims if v.bpf and v.bpf.member), None)
        shared: dict[str, Any] = {"oom_id": oom_id, "constraint": constraint, "oom_memcg_path": oom_memcg,
                                  "oom_group_path": group, "boot_id": self.boot_id}
        if self.has_kmsg:
            shared["report_logged"] = report is not None
        if report is not None:
            shared.update(gfp_mask=report.gfp_mask or None, alloc_order=report.order)
        shared.update(self._memcg_figures(inv, report, oom_memcg, first, constraint))
        rows = []
        for v in inv.victims:
            row = dict(v.bpf.row) if v.bpf is not None else self._kmsg_row(v.kill)  # type: ignore[arg-type]
            row.update(shared)
            if v.kill is not None:
                row["kmsg_seq"] = v.kill.seq
                if row.get("trigger_pid") is None and report is not None:
                    row["trigger_pid"] = report.trigger_pid
            member = v.bpf.member if v.bpf is not None and v.bpf.member is not None else (
                v.kill is not None and not v.kill.chosen)
            row["chosen"] = not member
            row["origin"] = ("kmsg-backlog" if inv.backlog else
                             "bpf+kmsg" if v.joined else "bpf" if v.bpf is not None else "kmsg")
            rows.append(row)
        for row in rows:
            self._emit_row(row)
            self._written[row["tid"]] = self._clock()
        if report is not None and report.seq not in self._reports_emitted:
            self._reports_emitted.add(report.seq)
            self._emit_candidates(report, oom_id, rows[0]["time"])
            if len(self._reports_emitted) > 10_000:  # bounded memory on a node that OOMs forever
                self._reports_emitted = set(sorted(self._reports_emitted)[-1000:])

    def _memcg_figures(self, inv: _Invocation, report: OomReport | None, oom_memcg: str | None,
                       first: BpfKill | None, constraint: str | None) -> dict[str, Any]:
        """The OOMing cgroup's usage, limit, peak, swap and kill count, the same on every row of the
        invocation, and the pool the kernel chose from."""
        out: dict[str, Any] = {}
        state = None
        path = oom_memcg or (first.row.get("cgroup_path") if first is not None else None)
        if not inv.backlog and path:  # a past kill: today's state of its cgroup would mislead
            # Read again now that every member is dead (the final kill count); the first
            # reading when the cgroup is gone already.
            state = self._memcg_state(path) or (inv.state if path == inv.state_path else None)
        if state is not None:
            out.update(memcg_usage_bytes=state.get("usage_bytes"), memcg_limit_bytes=state.get("limit_bytes"),
                       memcg_peak_bytes=state.get("peak_bytes"), memcg_swap_bytes=state.get("swap_bytes"),
                       memcg_oom_kills=state.get("events_oom_kill"))
        if first is not None and first.oom_memcg_path is not None and first.oom_memcg_path == oom_memcg:
            out.update(memcg_usage_bytes=first.oom_memcg_usage_bytes, memcg_limit_bytes=first.oom_memcg_limit_bytes)
        if report is not None and report.memory_usage_kb is not None:  # printed at the kill: the best
            out["memcg_usage_bytes"] = report.memory_usage_kb * KB
            out["memcg_limit_bytes"] = report.memory_limit_kb * KB if report.memory_limit_kb is not None else None
        if report is not None and report.constraint:
            out["pool_bytes"] = self._pool(report.constraint, report.memory_limit_kb and report.memory_limit_kb * KB,
                                           _report_swap_limit(report))
        elif constraint is not None:
            swap = state.get("swap_limit_bytes") if state is not None else None
            out["pool_bytes"] = self._pool(constraint, out.get("memcg_limit_bytes"), swap)
        return out


def _report_swap_limit(report: OomReport) -> int | None:
    """The swap the OOMing cgroup may use, from its report (v1: memory+swap minus memory)."""
    if report.memsw_limit_kb is not None and report.memory_limit_kb is not None:
        return max(report.memsw_limit_kb - report.memory_limit_kb, 0) * KB
    if report.swap_limit_kb is not None:
        return report.swap_limit_kb * KB
    return None
