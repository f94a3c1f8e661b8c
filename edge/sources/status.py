"""probe_status: the state of every source (and of the store), as a table.

One row per source every ``period`` seconds, and at once when a source's state
changes, so `probe_status | last 1h` shows what each probe was doing when, and
a degraded or failed probe is never hidden behind an empty table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_unix_seconds, utc_now
from pxo.edge.sources.base import Source, SourceContext, utf8

PROBE_STATUS = Table(
    "probe_status",
    "Per source (eBPF program, kernel log, cgroupfs and /proc samplers, the store): whether it runs, since "
    "when, events seen and lost, and the last error. Sampled periodically and on every change.",
    (
        TIME,
        Column("source", "VARCHAR", "Source name (oom, kill_bpf, ..., store)"),
        Column("state", "VARCHAR", "running, degraded (runs without part of its input), failed (opened "
                                   "again after a pause, reading what it missed; detail says when) or stopped"),
        Column("detail", "VARCHAR", "Why it is degraded or failed, and how to fix it"),
        Column("since", "TIMESTAMP", "When it entered this state (UTC)"),
        Column("events", "UBIGINT", "Events (rows) produced since the edge started"),
        Column("lost", "UBIGINT", "Events dropped (full ring buffers, overwritten kernel log records, records "
                                  "that could not be read, rows a full disk could not take) since the edge "
                                  "started"),
    ),
)


class ProbeStatusSource(Source):
    name = "probe_status"
    tables = (PROBE_STATUS,)

    def __init__(self, ctx: SourceContext, *, period: float = 10.0,
                 now: Callable[[], dt.datetime] = utc_now) -> None:
        super().__init__(ctx)
        self._statuses = ctx.statuses
        self.period = period
        self._now = now
        self._next = 0.0
        self._last: dict[str, tuple[str, str]] = {}

    def open(self) -> None:
        self._sample(force=True)

    def poll(self, timeout: float) -> None:
        self._stop.wait(min(timeout, 1.0))
        self._sample(force=self._clock() >= self._next)

    def _sample(self, *, force: bool) -> None:
        for st in [*self._statuses(), self.status]:
            key = (st.state, st.detail)
            if force or self._last.get(st.name) != key:
                self._last[st.name] = key
                self.emit("probe_status", {
                    "time": self._now(), "source": st.name, "state": st.state, "detail": utf8(st.detail) or None,
                    "since": from_unix_seconds(st.since),
                    "events": st.events, "lost": st.lost,
                })
        if force:
            self._next = self._clock() + self.period
