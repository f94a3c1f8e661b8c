"""One lifecycle for every source (Pixie's SourceConnector): open, poll, close.

A source is opened in the caller's thread, so that a failure to start (no
root, no BTF...) surfaces at once, then polled by its own thread until it is
stopped. Rows go to a Sink (the store's batching writer); status is explicit
and reported to the collector and the ``probe_status`` view.

A source whose poll raises is ``failed``, closed, and opened again after a
pause that grows with failures in a row (``RESTART_DELAYS``: 1 s to a minute,
the count starting over once a poll succeeds); meanwhile its status says so, with
the error and the pause. Opening again is what a restarted edge does: an event
source (ring buffers, the kernel log) adopts its pinned program, reads what it
captured meanwhile and the kernel log's backlog, and drops what the store already
has, so nothing is read twice or lost; a sampling source samples at once. A record
a source cannot turn into a row is not a failure of the source: it is counted lost
and logged, and the source goes on (edge/sources/ringbuf.py, edge/kmsg.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pxo.common.backoff import RESTART_DELAYS
from pxo.common.contract import source_state
from pxo.common.schema import Table
from pxo.common.timeutil import unix_us
from pxo.edge.btf import VMLINUX
from pxo.edge.kernel import Kernel
from pxo.edge.loader import node_kernel
from pxo.edge.pins import PIN_ROOT
from pxo.edge.watchdog import Busy
from pxo.v1 import pxo_pb2

log = logging.getLogger(__name__)


class Sink(Protocol):
    def append(self, table: str, row: Mapping[str, Any]) -> None: ...


@dataclass
class SourceStatus:
    name: str
    state: str = "stopped"  # stopped | running | degraded | failed
    detail: str = ""
    events: int = 0
    lost: int = 0
    since: float = 0.0  # unix seconds

    def to_proto(self) -> pxo_pb2.SourceStatus:
        return pxo_pb2.SourceStatus(
            name=self.name,
            state=source_state(self.state),
            detail=utf8(self.detail),
            events=self.events,
            lost=self.lost,
            since_unix_us=unix_us(self.since),
        )


def utf8(text: str) -> str:
    """``text`` as valid UTF-8, what protobuf and DuckDB take: a path read from the kernel may hold
    bytes that are not (Python keeps them as lone surrogates), and an error message quoting it
    once made every heartbeat of the edge fail. Such bytes are written as ``\\xNN``, where a detail
    leaves the edge: ``to_proto`` and the probe_status rows (edge/sources/status.py)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate no byte stands for
            return text.encode("utf-8", "backslashreplace").decode()
    return text


def _never_recorded(_boot_id: str, _kmsg_seq: int, _pid: int, _when: dt.datetime) -> bool:
    return False


@dataclass(frozen=True)
class SourceContext:
    """Everything the edge gives its sources, in one typed bundle: every source takes
    the same context, and tests pass fixture trees and clocks through it."""

    sink: Sink
    clock: Callable[[], float] = time.time
    btf_path: Path = VMLINUX  # the running kernel's BTF: hooks and struct offsets (edge/kernel.py)
    proc: Path = Path("/proc")
    mountinfo: Path = Path("/proc/self/mountinfo")
    kmsg: Path = Path("/dev/kmsg")
    pin_root: Path = PIN_ROOT  # where the eBPF programs are pinned, to outlive the edge (edge/pins.py)
    use_bpf: bool = True  # False: eBPF sources refuse, the OOM source runs on the kernel log alone
    # recorded(boot_id, kmsg_seq, tid, time): is this OOM kill already in the store? (backlog recovery)
    oom_recorded: Callable[[str, int, int, dt.datetime], bool] = _never_recorded
    # the status of everything else the edge runs (probe_status reports them)
    statuses: Callable[[], list[SourceStatus]] = field(default=list)

    def kernel(self) -> Kernel:
        """The running kernel, once the node has what eBPF needs (else PrerequisiteError, one sentence);
        its BTF's answers come from pxo's loader, so the edge never parses BTF (edge/loader.py)."""
        return node_kernel(self.btf_path, self.pin_root)


class Source(ABC):
    """Base of every edge source. Subclasses set ``name`` and ``tables``."""

    name: str = ""
    tables: tuple[Table, ...] = ()

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self._sink = ctx.sink
        self._clock = ctx.clock
        self.status = SourceStatus(self.name, since=ctx.clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # open() and close() never overlap: the source's thread may be opening it again (loading a
        # program takes seconds) when stop() comes to close it
        self._life = threading.Lock()
        self.restarts = 0  # opened again after a failure
        self.busy = Busy(f"source {self.name}")  # each poll and each opening again (edge/watchdog.py)

    # -- what a source implements ----------------------------------------------

    @abstractmethod
    def open(self) -> None:
        """Acquire kernel resources; raise an EdgeError with a clear message on failure."""

    @abstractmethod
    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for data and emit what arrived."""

    def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing to release
        """Release what open() acquired."""

    # -- the lifecycle ---------------------------------------------------------

    def emit(self, table: str, row: Mapping[str, Any]) -> None:
        self._sink.append(table, row)
        self.status.events += 1

    def degrade(self, detail: str) -> None:
        """Called from open(): the source runs, but without part of what it should see."""
        self._set_state("degraded", detail)
        log.warning("source %s is DEGRADED: %s", self.name, detail)

    def _set_state(self, state: str, detail: str = "") -> None:
        self.status.state = state
        self.status.detail = detail
        self.status.since = self._clock()

    def start(self) -> None:
        try:
            self.open()
        except Exception as exc:
            self._set_state("failed", str(exc))
            raise
        if self.status.state != "degraded":
            self._set_state("running")
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    RESTART_DELAYS = RESTART_DELAYS  # common/backoff.py's; a test may set its own on an instance

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with self.busy:
                    self.poll(0.2)
            except Exception as exc:  # a source must not die silently, nor for good
                failures += 1
                delay = self.RESTART_DELAYS[min(failures, len(self.RESTART_DELAYS)) - 1]
                log.exception("source %s failed; opening it again in %g s", self.name, delay)
                self._set_state("failed", f"{type(exc).__name__}: {exc} (opening it again in {delay:g} s)")
                if not self._reopen(delay):
                    return
                continue
            failures = 0

    def _reopen(self, delay: float) -> bool:
        """Close, then open again after ``delay`` seconds, and again after each failure; False
        if the source was stopped meanwhile (then nothing it opened is left open)."""
        with self._life, self.busy:
            self._close_quietly()  # what close() releases may be half gone already; it releases the rest first
        while not self._stop.wait(delay):
            with self._life, self.busy:
                if self._stop.is_set():  # stop() came meanwhile and closed what was open
                    return False
                try:
                    self.open()
                except Exception as exc:
                    delay = self.RESTART_DELAYS[-1]
                    log.warning("source %s cannot open again (retrying in %g s): %s", self.name, delay, exc)
                    self._set_state("failed", f"cannot open again: {exc} (retrying in {delay:g} s)")
                    continue
                if self._stop.is_set():  # stopped while it opened: stop() may have given up waiting
                    self._close_quietly()
                    return False
            if self.status.state != "degraded":  # open() says so itself
                self._set_state("running")
            self.restarts += 1
            self._reopened()
            log.warning("source %s is running again (restart %d)", self.name, self.restarts)
            return True
        return False

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:
            log.warning("source %s: closing it failed", self.name, exc_info=True)

    def _reopened(self) -> None:  # noqa: B027 - optional hook
        """Called once the source is open again after a failure."""

    STOP_WAIT = 5.0  # seconds stop() waits for the source's thread, then again for an open() under way

    def stop(self) -> None:
        """Stop the thread and close the source. An open() under way (the thread opening it again
        after a failure) is waited for, so the two never overlap; if it takes longer than
        ``STOP_WAIT``, its thread closes the source once it is open and stop() returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.STOP_WAIT)
        if not self._life.acquire(timeout=self.STOP_WAIT):
            log.warning("source %s is still opening after %g s; it is closed when it is open", self.name,
                        self.STOP_WAIT)
            return
        try:
            self.close()
        finally:
            self._life.release()
            if self.status.state in ("running", "degraded"):
                self._set_state("stopped")


class SamplingSource(Source):
    """A source that samples every ``period`` seconds of its clock and otherwise waits.

    The first poll samples; a clock that steps backwards triggers a sample
    rather than a long silence. After a failure (see ``Source``) it samples at
    once when open again: each sample stands alone. A cgroup vanishing mid-read
    once stopped the early warnings of a node for good.
    """

    def __init__(self, ctx: SourceContext, *, period: float) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, not {period!r}")
        super().__init__(ctx)
        self.period = period
        self._last_at = float("-inf")
        self._next_at = float("-inf")

    def _reopened(self) -> None:
        self._next_at = float("-inf")  # sample at once

    @abstractmethod
    def sample(self, now: float) -> int:
        """Take one sample stamped ``now`` (a clock() reading); return the rows emitted."""

    def poll(self, timeout: float) -> None:
        now = self._clock()
        if now >= self._next_at or now < self._last_at:
            self._last_at, self._next_at = now, now + self.period
            self.sample(now)
        else:
            self._stop.wait(min(timeout, self._next_at - now))
