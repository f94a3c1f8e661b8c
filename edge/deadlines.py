"""Every query's deadline on one thread.

The store stops a query that outlives its deadline by interrupting its cursor. A
``threading.Timer`` per query did that with a thread per query: starting and ending it cost
about 140 µs of CPU, a seventh of the edge's whole budget per Execute beyond DuckDB (1 ms,
issue 15; bench/execute_grpc.py). ``Deadlines`` keeps them in a heap served by one thread
that sleeps until the earliest, so arming and cancelling one is a heap push and a dict pop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deadlines:
    def __init__(self, name: str = "deadlines") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []  # (monotonic deadline, key); cancelled keys stay until popped
        self._armed: dict[int, Callable[[], object]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, seconds: float, action: Callable[[], object]) -> int:
        """Run ``action`` on the deadlines' thread in ``seconds`` unless ``cancel`` is called
        first with the key returned."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            key = next(self._keys)
            heapq.heappush(self._heap, (time.monotonic() + seconds, key))
            self._armed[key] = action
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            elif self._heap[0][1] == key:
                self._cond.notify()  # earlier than what the thread sleeps until
            return key

    def cancel(self, key: int) -> None:
        """The action of ``key`` will not run (if it is not running already)."""
        with self._cond:
            self._armed.pop(key, None)
            if len(self._heap) > 64 and len(self._heap) > 2 * len(self._armed):  # mostly cancelled: compact
                self._heap = [e for e in self._heap if e[1] in self._armed]
                heapq.heapify(self._heap)

    def pending(self) -> int:
        with self._cond:
            return len(self._armed)

    def _run(self) -> None:
        while (action := self._next()) is not None:
            try:
                action()
            except Exception:  # e.g. interrupting a cursor closed meanwhile: the query ended anyway
                log.debug("%s: a deadline's action failed", self.name, exc_info=True)

    def _next(self) -> Callable[[], object] | None:
        """The action whose deadline passed, once one has; None once closed."""
        with self._cond:
            while not self._closed:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)  # cancelled
                if not self._heap:
                    self._cond.wait()
                    continue
                when, key = self._heap[0]
                left = when - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                return self._armed.pop(key)
            return None

    def close(self) -> None:
        """Stop the thread; armed actions never run."""
        with self._cond:
            self._closed = True
            self._armed.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
