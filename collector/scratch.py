"""A scratch DuckDB for the collector's own work (planning probes, merging
partial answers).

Opening an in-memory DuckDB costs 12-17 ms here, more than a whole query
should; so there is one scratch database per configuration, and each thread
uses its own cursor on it (a few microseconds to open). Every use runs inside a
transaction that is rolled back, and creates TEMP tables and views only: those
belong to the cursor, so threads never see, nor conflict on, each other's, and
they vanish with the rollback. The database's memory limit is shared by every
query merging at once. External access is off and the configuration locked, as
on the edges.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from pxo.common.sqlgate import HARDENED

_local = threading.local()
_roots: dict[tuple[int, str], duckdb.DuckDBPyConnection] = {}
_roots_lock = threading.Lock()


def _connect(threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={**HARDENED, "threads": threads, "memory_limit": memory_limit})
    con.execute("SET lock_configuration = true")
    return con


def _cursor(key: tuple[int, str]) -> duckdb.DuckDBPyConnection:
    """This thread's cursor on the scratch database of ``key`` (made on first use)."""
    cache: dict[tuple[int, str], duckdb.DuckDBPyConnection] = getattr(_local, "cons", None) or {}
    _local.cons = cache
    con = cache.get(key)
    if con is None:
        with _roots_lock:
            root = _roots.get(key)
            if root is None:
                root = _roots[key] = _connect(*key)
        con = cache[key] = root.cursor()
    return con


@contextmanager
def scratch(*, threads: int = 1, memory_limit: str = "1GB") -> Iterator[duckdb.DuckDBPyConnection]:
    """A clean connection for one use: create TEMP tables and views only; everything
    done with it is rolled back."""
    key = (threads, memory_limit)
    con = _cursor(key)
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    finally:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # a broken cursor is not reused
            _local.cons.pop(key, None)
            con.close()
