"""The base of every source whose BPF program sends one struct per event through a ring buffer."""

from __future__ import annotations

import ctypes
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pxo.edge.bpf import SharedStruct, load_program, read_counter
from pxo.edge.btf import VMLINUX
from pxo.edge.sources.base import Sink, Source


class RingBufferSource(Source):
    """A source whose program sends one shared struct per event through a ring buffer.

    A subclass names its program, struct, ring buffer, lost-event counter and
    table, and says how an event becomes a row; it may check the kernel before
    loading (``check``) and pass extra ``-D`` settings (``settings``). The
    struct's size always goes to the program as ``<PROGRAM>_EVENT_SIZE``, where
    a _Static_assert compares it with the C struct.
    """

    program: ClassVar[str] = ""  # bpf/<program>.bpf.c
    event: ClassVar[type[SharedStruct]]
    ring: ClassVar[str] = ""  # the BPF_RINGBUF_OUTPUT map
    lost_counter: ClassVar[str] = ""  # the one-slot array counting reserve failures
    table: ClassVar[str] = ""

    def __init__(self, *, sink: Sink, btf_path: Path = VMLINUX, **kwargs: Any) -> None:
        super().__init__(sink=sink, **kwargs)
        self._btf_path = btf_path
        self._bpf: Any = None

    def check(self) -> None:
        """Refuse clearly (PrerequisiteError) when the kernel lacks what the program hooks."""

    def settings(self) -> dict[str, int]:
        """Extra -D settings for the program."""
        return {}

    @abstractmethod
    def row(self, event: Any) -> dict[str, Any]:
        """The table row of one event (a ``self.event`` instance)."""

    def open(self) -> None:
        self.check()
        flags = {f"{self.program.upper()}_EVENT_SIZE": ctypes.sizeof(self.event), **self.settings()}
        self._bpf = load_program(self.program, settings=flags, btf_path=self._btf_path)
        self._bpf[self.ring].open_ring_buffer(self._on_event)

    def _on_event(self, _ctx: Any, data: int, size: int) -> None:
        if size < ctypes.sizeof(self.event):
            self.status.lost += 1
            return
        self.emit(self.table, self.row(self.event.from_address(data)))

    def poll(self, timeout: float) -> None:
        self._bpf.ring_buffer_poll(int(timeout * 1000))
        self.status.lost = max(self.status.lost, read_counter(self._bpf, self.lost_counter))

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()  # what is already in the buffer still counts
            self._bpf.cleanup()
            self._bpf = None
