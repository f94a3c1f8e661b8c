"""The one cursor pool: a database per configuration, a cursor per thread, hardened."""

from __future__ import annotations

import threading

import duckdb
import pytest

from pxo.common import duckpool


def test_one_database_per_configuration_and_a_cursor_per_thread() -> None:
    pool = duckpool.pool("test-pool", threads=1)
    assert duckpool.pool("test-pool", threads=1) is pool
    assert duckpool.pool("test-pool", threads=2) is not pool
    pool.cursor().execute("CREATE TABLE IF NOT EXISTS shared (x INTEGER)")  # the catalog is the database's
    mine = pool.cursor()
    assert pool.cursor() is mine
    theirs: list[duckdb.DuckDBPyConnection] = []
    seen: list[object] = []

    def other() -> None:
        con = pool.cursor()
        theirs.append(con)
        seen.append(con.execute("SELECT count(*) FROM shared").fetchall())

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert theirs[0] is not mine and seen == [[(0,)]]


def test_a_discarded_cursor_is_replaced() -> None:
    pool = duckpool.pool("test-discard")
    first = pool.cursor()
    pool.discard()
    with pytest.raises(duckdb.Error):
        first.execute("SELECT 1")
    assert pool.cursor().execute("SELECT 1").fetchall() == [(1,)]


def test_hardened_and_locked() -> None:
    con = duckpool.pool("test-hardened").cursor()
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_csv('/etc/hostname')").fetchall()
    with pytest.raises(duckdb.Error):
        con.execute("SET enable_external_access = true")
