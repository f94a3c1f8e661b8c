"""The collector's scratch database: one per configuration, a cursor per thread."""

from __future__ import annotations

import concurrent.futures
import threading

import duckdb
import pytest

from pxo.collector.scratch import scratch


def test_threads_use_the_same_table_names_without_seeing_each_other() -> None:
    """Concurrent merges all name their table after the queried one: TEMP tables are
    each cursor's own, and the rollback leaves nothing for the thread's next use."""
    barrier = threading.Barrier(8)

    def work(i: int) -> list[tuple[int, int]]:
        seen = []
        for round_ in range(20):
            with scratch(threads=2) as con:
                con.execute('CREATE TEMP TABLE "oom_events" (who INTEGER, n INTEGER)')
                con.execute('INSERT INTO "oom_events" SELECT $1, range FROM range($2)', [i, 100 + round_])
                if round_ == 0:
                    barrier.wait(timeout=30)  # every thread holds its table at once
                seen.append(con.execute('SELECT min(who), count(*) FROM "oom_events"').fetchall()[0])
        return seen

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, seen in enumerate(results):
        assert seen == [(i, 100 + r) for r in range(20)]


def test_a_failed_statement_does_not_poison_the_next_use() -> None:
    with scratch() as con, pytest.raises(duckdb.Error):
        con.execute("SELECT CAST('x' AS INTEGER)").fetchall()
    with scratch() as con:
        assert con.execute("SELECT 42").fetchall() == [(42,)]
        con.execute('CREATE TEMP TABLE "t" (x INTEGER)')
    with scratch() as con:  # rolled back: the name is free again
        con.execute('CREATE TEMP TABLE "t" (x INTEGER)')


def test_external_access_stays_off() -> None:
    with scratch() as con:
        with pytest.raises(duckdb.Error):
            con.execute("SELECT * FROM read_csv('/etc/hostname')").fetchall()
        with pytest.raises(duckdb.Error):
            con.execute("SET enable_external_access = true")
