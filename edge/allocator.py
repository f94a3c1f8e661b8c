"""Give the memory an answer used back to the kernel when the answer is done.

DuckDB's Linux builds bundle jemalloc (its symbols prefixed ``duckdb_je_``), which keeps
freed pages for a second (``dirty_decay_ms:1000``) and returns them only when it next
allocates or frees: an edge asked a question every few seconds kept most of each answer's
peak resident between questions. Returning pages costs CPU when they are needed again
(the kernel zeroes each one on its next fault: about 1 ms per answer of a million rows,
bench/execute_cost.py), so ``IdleRelease`` purges every arena once the store has answered
nothing for a second (edge/store.py): a burst of questions (a collector's fan-out, a
dashboard) keeps its pages, an edge left alone gives them back. bench/allocator.py
measures it side by side with DuckDB's default, with a purge after every answer, and with
jemalloc told to return each page as it is freed (``DUCKDB_JE_MALLOC_CONF=dirty_decay_ms:0``);
docs/benchmarks.md ("Edge memory", third round) has the figures.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Callable

ALL_ARENAS = 4096  # jemalloc's MALLCTL_ARENAS_ALL


@functools.cache
def _mallctl() -> Callable[..., int] | None:
    import _duckdb

    try:
        fn: Callable[..., int] = ctypes.CDLL(_duckdb.__file__).duckdb_je_mallctl
    except (OSError, AttributeError):  # a DuckDB without jemalloc (another platform's build)
        return None
    return fn


def release() -> bool:
    """Return the pages DuckDB's allocator holds free to the kernel; False when this DuckDB
    has no jemalloc to ask."""
    mallctl = _mallctl()
    if mallctl is None:
        return False
    return mallctl(f"arena.{ALL_ARENAS}.purge".encode(), None, None, None, ctypes.c_size_t(0)) == 0


class IdleRelease:
    """``release()`` once nothing was answered for ``idle`` seconds after an answer."""

    def __init__(self, idle: float = 1.0) -> None:
        self.idle = idle
        self._cond = threading.Condition()
        self._last: float | None = None  # when the latest answer not yet released ended
        self._closed = False
        self._thread: threading.Thread | None = None

    def answered(self) -> None:
        """An answer just ended."""
        with self._cond:
            if self._closed:
                return
            pending = self._last is not None
            self._last = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="store-release", daemon=True)
                self._thread.start()
            elif not pending:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._last is None and not self._closed:
                    self._cond.wait()
                while not self._closed and self._last is not None and \
                        (left := self._last + self.idle - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._closed:
                    return
                self._last = None
            release()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)


def dirty_bytes() -> int | None:
    """Bytes of freed pages jemalloc holds for reuse (stats.arenas.<all>.pdirty times the
    page size), fresh; None without jemalloc."""
    mallctl = _mallctl()
    if mallctl is None:
        return None
    epoch = ctypes.c_uint64(1)
    mallctl(b"epoch", None, None, ctypes.byref(epoch), ctypes.c_size_t(8))  # refresh the statistics
    pages, size = ctypes.c_size_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
    if mallctl(f"stats.arenas.{ALL_ARENAS}.pdirty".encode(), ctypes.byref(pages), ctypes.byref(size), None,
               ctypes.c_size_t(0)) != 0:
        return None
    page, psize = ctypes.c_size_t(), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
    if mallctl(b"arenas.page", ctypes.byref(page), ctypes.byref(psize), None, ctypes.c_size_t(0)) != 0:
        return None
    return pages.value * page.value
