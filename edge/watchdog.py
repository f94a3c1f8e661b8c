"""A hang is a crash that never ends: the edge's watchdog turns one into an exit.

The edge's work happens in a few long-lived loops: each source's thread (poll, or open again
after a failure) and the store's writer (commit, retention). A loop that raises is handled
where it runs (edge/sources/base.py opens the source again; the writer keeps its rows and
retries). A loop that *blocks* (a read that never returns, a lock never released, a DuckDB
call that never ends) raised nothing: the edge went on serving and reporting healthy while
that source captured nothing, or nothing was committed again. Kubernetes' liveness probe
asked gRPC's health service, which said SERVING all along.

Each loop marks the work it is doing with a ``Busy`` (``with busy: ...``); the time it waits
for work is not marked. The ``Watchdog`` looks at them every few seconds; a loop busy with one
piece of work for longer than ``stall_after`` is stalled, and ``on_stall`` gets its name, for
how long, and the stack of the thread where it is stuck. The edge (edge/main.py) then reports
NOT_SERVING, logs that stack, stops what it can within a grace period and exits with
``EXIT_STALLED``; whatever runs it (the kubelet, podman's ``--restart always``, the local
supervisor in common/supervise.py) starts it again, which is a path built to lose nothing:
the committed rows are in the store, and the pinned programs keep capturing meanwhile
(edge/pins.py). The idea is systemd's WatchdogSec and crash-only software: one way back from
any failure, the restart, rather than a repair for each way a thread can get stuck.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

EXIT_STALLED = 70  # sysexits' EX_SOFTWARE: what the edge exits with when a loop has stalled


class Busy:
    """One loop's mark: ``with busy:`` around each piece of work (never around the wait for
    work). Read from the watchdog's thread: ``since`` is when the current piece began
    (monotonic seconds), None between pieces."""

    __slots__ = ("name", "since", "thread")

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: float | None = None
        self.thread: int | None = None

    def __enter__(self) -> Busy:
        self.thread = threading.get_ident()
        self.since = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.since = None


@dataclass(frozen=True)
class Stall:
    name: str  # the loop's, e.g. "source process_memory", "store writer"
    seconds: float  # busy with one piece of work for this long
    stack: str  # where its thread is, innermost call last ("" if the thread is gone)


def stack_of(thread: int | None) -> str:
    frame = sys._current_frames().get(thread) if thread is not None else None
    return "".join(traceback.format_stack(frame)) if frame is not None else ""


class Watchdog:
    """Looks at ``marks()`` every ``period`` seconds and calls ``on_stall`` once, from its own
    thread, for the first loop busy longer than ``stall_after``; then it stops looking."""

    def __init__(self, marks: Callable[[], Iterable[Busy]], *, stall_after: float,
                 on_stall: Callable[[Stall], None], period: float | None = None) -> None:
        if stall_after <= 0:
            raise ValueError(f"stall_after must be positive, not {stall_after!r}")
        self.marks = marks
        self.stall_after = stall_after
        self.on_stall = on_stall
        self.period = period if period is not None else min(5.0, stall_after / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reporting = False  # on_stall runs in the watchdog's thread, and may call stop() from another

    def check(self) -> Stall | None:
        """The loop that has been busy longest, if longer than ``stall_after``."""
        now = time.monotonic()
        worst: tuple[float, Busy] | None = None
        for mark in self.marks():
            since = mark.since  # one read: the loop's thread may end its piece meanwhile
            if since is not None and (worst is None or now - since > worst[0]):
                worst = (now - since, mark)
        if worst is None or worst[0] <= self.stall_after:
            return None
        seconds, mark = worst
        return Stall(mark.name, seconds, stack_of(mark.thread))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                stall = self.check()
            except Exception:  # the watchdog itself must not die: looking again is harmless
                log.exception("watchdog: looking at the loops failed")
                continue
            if stall is not None:
                self._reporting = True
                self.on_stall(stall)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and not self._reporting and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
