"""Give the memory an answer used back to the kernel when the answer is done.

DuckDB's Linux builds bundle jemalloc (its symbols prefixed ``duckdb_je_``), which keeps
freed pages for a second (``dirty_decay_ms:1000``) and returns them only when it next
allocates or frees: an edge asked a question every few seconds kept most of each answer's
peak resident between questions. ``release()`` purges every arena once, when an answer
is finished (edge/store.py). Measured against DuckDB's default by bench/allocator.py:
resident memory 0.96x and no CPU cost that run could see, where telling jemalloc to return
pages as each is freed (``DUCKDB_JE_MALLOC_CONF=dirty_decay_ms:0``) cost 1.12x the CPU per
answer (docs/benchmarks.md, "Allocator").
"""

from __future__ import annotations

import ctypes
import functools
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
