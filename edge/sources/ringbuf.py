"""Ring-buffer eBPF programs: the input every event-per-struct program shares, and the
source made of one such input and a row function.

``RingBufferInput`` loads a program, opens its ring buffer and hands each
event to a callback; a source is built from it (``RingBufferSource``: one
input, one table) or from it and other inputs (the OOM source joins it with
the kernel log).
"""

from __future__ import annotations

import ctypes
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pxo.edge.bpf import SharedStruct, load_program, read_counter
from pxo.edge.errors import PrerequisiteError
from pxo.edge.kernel import Kernel
from pxo.edge.sources.base import Source, SourceContext, SourceStatus


class RingBufferInput:
    """bpf/<program>.bpf.c, its ring buffer ``ring`` of ``event`` structs, and its lost-event counter.

    The struct's size always goes to the program as ``<PROGRAM>_EVENT_SIZE``,
    where a _Static_assert compares it with the C struct. Events shorter than
    the struct are counted as lost in ``status``.
    """

    def __init__(self, program: str, event: type[SharedStruct], *, ring: str, lost_counter: str,
                 on_event: Callable[[Any], None], status: SourceStatus) -> None:
        self.program = program
        self.event = event
        self.ring = ring
        self.lost_counter = lost_counter
        self._on_event = on_event
        self._status = status
        self.bpf: Any = None

    def open(self, kernel: Kernel, settings: Mapping[str, int]) -> None:
        flags = {f"{self.program.upper()}_EVENT_SIZE": ctypes.sizeof(self.event), **settings}
        self.bpf = load_program(self.program, kernel=kernel, settings=flags)
        self.bpf[self.ring].open_ring_buffer(self._callback)

    def _callback(self, _ctx: Any, data: int, size: int) -> None:
        if size < ctypes.sizeof(self.event):
            self._status.lost += 1
            return
        self._on_event(self.event.from_address(data))

    def poll(self, timeout: float) -> None:
        self.bpf.ring_buffer_poll(int(timeout * 1000))
        # The kernel's wakeup can be late or missed (seen on 7.2 under load: events sat in the
        # buffer for seconds): read whatever is there either way; it costs two loads when empty.
        self.bpf.ring_buffer_consume()
        self._status.lost = max(self._status.lost, read_counter(self.bpf, self.lost_counter))

    def close(self) -> None:
        if self.bpf is not None:
            self.bpf.ring_buffer_consume()  # what is already in the buffer still counts
            self.bpf.cleanup()
            self.bpf = None


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
