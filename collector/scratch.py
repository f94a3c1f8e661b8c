"""A scratch DuckDB for the collector's own work (merging partial answers, checking a
regular expression, the Arrow types of a follow's columns): a cursor of one shared
in-memory database per configuration (common/duckpool.py).

Every use runs inside a transaction that is rolled back, and creates TEMP tables and
views only: those belong to the cursor, so threads never see, nor conflict on, each
other's, and they vanish with the rollback. The database's memory limit is shared by
every query merging at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from pxo.common import duckpool


@contextmanager
def scratch(*, threads: int = 1, memory_limit: str = "1GB") -> Iterator[duckdb.DuckDBPyConnection]:
    """A clean connection for one use: create TEMP tables and views only; everything
    done with it is rolled back."""
    pool = duckpool.pool("collector-scratch", threads=threads, memory_limit=memory_limit)
    con = pool.cursor()
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    finally:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # a broken cursor is not reused
            pool.discard()
