"""Ring-buffer eBPF programs: the input every event-per-struct program shares, and the
source made of one such input and a row function.

``RingBufferInput`` loads a program (pinned: it outlives the edge, see
edge/pins.py), opens its ring buffer and hands each event to a callback; a
source is built from it (``RingBufferSource``: one input, one table) or from
it and other inputs (the OOM source joins it with the kernel log).
"""

from __future__ import annotations

import ctypes
import logging
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pxo.edge.bpf import SharedStruct, load_program, read_counter
from pxo.edge.errors import PrerequisiteError
from pxo.edge.kernel import Kernel
from pxo.edge.pins import PinnedProgram, RingBuffer
from pxo.edge.sources.base import Source, SourceContext, SourceStatus

log = logging.getLogger(__name__)


class RingBufferInput:
    """bpf/<program>.bpf.c, its ring buffer ``ring`` of ``event`` structs, and its lost-event counter.

    The struct's size always goes to the program as ``<PROGRAM>_EVENT_SIZE``,
    where a _Static_assert compares it with the C struct. Events shorter than
    the struct, and events whose callback raises (a value the row code did not
    expect), are counted as lost in ``status`` (``dropped``) and logged: one bad
    record must not stop the stream behind it.
    """

    def __init__(self, program: str, event: type[SharedStruct], *, ring: str, lost_counter: str,
                 on_event: Callable[[Any], None], status: SourceStatus, replay: float = 0.0) -> None:
        """``replay``: seconds for which delivered events stay in the ring buffer for the next edge,
        in case this one is killed before their rows are written (pins.RingBuffer); a source that
        sets it drops the replayed events it finds already written."""
        self.program = program
        self.replay = replay
        self.event = event
        self.ring = ring
        self.lost_counter = lost_counter
        self._on_event = on_event
        self._status = status
        self.bpf: PinnedProgram | None = None
        self._ring: RingBuffer | None = None
        self.dropped = 0  # events too short, or whose callback raised

    def open(self, kernel: Kernel, settings: Mapping[str, int]) -> None:
        """Load (or adopt, when an earlier edge pinned the same) the program and map its ring buffer.

        What the kernel wrote while no edge was reading waits in the ring buffer: the first
        ``drain()`` or ``poll()`` delivers it, before anything newer."""
        flags = {f"{self.program.upper()}_EVENT_SIZE": ctypes.sizeof(self.event), **settings}
        self.bpf = load_program(self.program, kernel=kernel, settings=flags)
        try:
            self._ring = self.bpf.ring_buffer(self.ring, self._callback, replay=self.replay)
        except Exception:
            self.bpf.cleanup()
            self.bpf = None
            raise

    @property
    def adopted(self) -> bool:
        """The program was pinned by an earlier edge (its ring buffer may hold a backlog)."""
        return self.bpf is not None and self.bpf.adopted

    def _callback(self, data: int, size: int) -> None:
        if size < ctypes.sizeof(self.event):
            self._drop()
            return
        try:
            self._on_event(self.event.from_address(data))
        except Exception:
            self._drop()
            if self.dropped <= 3 or self.dropped % 1000 == 0:
                log.exception("%s: an event could not be read (%d dropped so far)", self.program, self.dropped)

    def _drop(self) -> None:
        self.dropped += 1
        self._status.lost += 1

    def drain(self) -> int:
        """Deliver every event the ring buffer holds now; returns how many."""
        return self._ring.consume() if self._ring is not None else 0

    def poll(self, timeout: float) -> None:
        assert self._ring is not None and self.bpf is not None
        self._ring.poll(int(timeout * 1000))
        # The kernel's wakeup can be late or missed (seen on 7.2 under load: events sat in the
        # buffer for seconds): read whatever is there either way; it costs two loads when empty.
        self._ring.consume()
        self._status.lost = max(self._status.lost, read_counter(self.bpf, self.lost_counter) + self.dropped)

    def close(self) -> None:
        """Stop reading; the program stays pinned and keeps capturing for the next edge (or for this
        source opened again)."""
        if self.bpf is not None:
            try:
                self.drain()  # what is already in the buffer still counts
            finally:
                self.bpf.cleanup()
                self.bpf = None
                self._ring = None


class RingBufferSource(Source):
    """A source of one table, filled from one ring-buffer program.

    A subclass names its program, struct, ring buffer, lost-event counter and
    table; says which variant of its program this kernel needs (``settings``,
    from the kernel's BTF, refusing with PrerequisiteError when the kernel
    lacks a hook) and how an event becomes a row (``row``).
    """

    program: ClassVar[str] = ""  # bpf/<program>.bpf.c
    event: ClassVar[type[SharedStruct]]
    ring: ClassVar[str] = ""  # the BPF_RINGBUF_OUTPUT map
    lost_counter: ClassVar[str] = ""  # the one-slot array counting reserve failures
    table: ClassVar[str] = ""

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self.input = RingBufferInput(self.program, self.event, ring=self.ring, lost_counter=self.lost_counter,
                                     on_event=self._on_event, status=self.status)

    def settings(self, kernel: Kernel) -> dict[str, int]:
        """The program's -D settings on this kernel; PrerequisiteError when it lacks what the program hooks."""
        return {}

    @abstractmethod
    def row(self, event: Any) -> dict[str, Any]:
        """The table row of one event (a ``self.event`` instance)."""

    def open(self) -> None:
        if not self.ctx.use_bpf:
            raise PrerequisiteError("eBPF disabled by configuration")
        kernel = self.ctx.kernel()  # root, BTF, BCC, headers: checked first, in that order
        self.input.open(kernel, self.settings(kernel))

    def _on_event(self, event: Any) -> None:
        self.emit(self.table, self.row(event))

    def poll(self, timeout: float) -> None:
        self.input.poll(timeout)

    def close(self) -> None:
        self.input.close()
