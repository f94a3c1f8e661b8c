"""One way to cap the streams a process serves at once (the collector's and the cloud's follow
streams): a slot is taken before a stream starts, refused when none is free, and given back
once when the stream ends, however it ends. Thread-safe: slots are taken and given back from
server threads."""

from __future__ import annotations

import threading
from types import TracebackType


class SlotsFull(Exception):
    """Every slot is taken; ``cap`` is how many there are (the boundary words it for its users)."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"all {cap} slots are taken")
        self.cap = cap


class Slots:
    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"a cap of slots is at least 1, not {cap}")
        self.cap = cap
        self._lock = threading.Lock()
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    def take(self) -> Slot:
        """A slot, or SlotsFull."""
        with self._lock:
            if self._active >= self.cap:
                raise SlotsFull(self.cap)
            self._active += 1
        return Slot(self)

    def _give_back(self) -> None:
        with self._lock:
            self._active -= 1


class Slot:
    """One taken slot; ``release`` gives it back once, however often it is called. ``with`` releases it."""

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            slots, self._slots = self._slots, None
        if slots is not None:
            slots._give_back()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
