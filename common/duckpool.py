"""Shared in-memory DuckDB databases, a cursor per thread on each: the one mechanism
behind the SQL gate's parser (common/sqlgate.py) and the collector's scratch database
(collector/scratch.py).

Opening an in-memory DuckDB costs 12-25 ms, more than a whole query should; a cursor on
an open one costs a few microseconds. So each configuration (its name, threads and
memory limit) has one database, opened on first use, and each thread gets its own
cursor on it, kept for the thread's life. Cursors share the database's catalog but not
their TEMP objects nor their transactions. Every database is HARDENED and its
configuration locked: no files, no network, no extensions, nothing changed later.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import duckdb

# Settings of every DuckDB connection that parses or runs query SQL (the gate's, the
# collector's, the edge's store): no files, no network, no extensions loaded or
# installed behind our back.
HARDENED: dict[str, bool] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
}


@dataclass
class Pool:
    """One database of a configuration and a cursor per thread on it."""

    name: str  # what it is for, so two uses never share cursors by accident
    threads: int = 1
    memory_limit: str = ""  # DuckDB's default when empty
    _root: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor (opened on its first use)."""
        con: duckdb.DuckDBPyConnection | None = getattr(self._local, "con", None)
        if con is None:
            with self._lock:
                if self._root is None:
                    config: dict[str, str | bool | int | float | list[str]] = {**HARDENED, "threads": self.threads}
                    if self.memory_limit:
                        config["memory_limit"] = self.memory_limit
                    self._root = duckdb.connect(":memory:", config=config)
                    self._root.execute("SET lock_configuration = true")
                con = self._local.con = self._root.cursor()
        return con

    def discard(self) -> None:
        """Drop this thread's cursor (it is broken): the next use opens a new one."""
        con = getattr(self._local, "con", None)
        self._local.con = None
        if con is not None:
            with contextlib.suppress(duckdb.Error):
                con.close()


_pools: dict[tuple[str, int, str], Pool] = {}
_pools_lock = threading.Lock()


def pool(name: str, *, threads: int = 1, memory_limit: str = "") -> Pool:
    """The pool of this configuration (one per process)."""
    key = (name, threads, memory_limit)
    with _pools_lock:
        found = _pools.get(key)
        if found is None:
            found = _pools[key] = Pool(name, threads, memory_limit)
        return found
