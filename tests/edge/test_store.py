"""The edge store on real DuckDB files."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import utc_now
from pxo.edge import allocator
from pxo.edge.errors import FragmentError, StoreError
from pxo.edge.store import Store

T = Table("samples", "test rows", (TIME, Column("pid", "INTEGER", "p"), Column("name", "VARCHAR", "n")))
T0 = utc_now().replace(microsecond=0) - dt.timedelta(hours=1)  # recent: within every retention


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"time": T0 + dt.timedelta(seconds=i), "pid": i, "name": f"p{i}"} for i in range(start, start + n)]


def fill(store: Store, n: int) -> None:
    for r in rows(n):
        store.append("samples", r)
    store.flush()


def collect(store: Store, sql: str, **kw: object) -> list[dict]:
    return [r for b in store.execute(sql, **kw) for r in b.to_pylist()]


def test_appends_are_committed_and_time_bounds_are_parameters(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05)
    store.start()
    fill(store, 10)
    got = collect(store, 'SELECT pid FROM samples WHERE "time" >= $start AND "time" < $end ORDER BY pid',
                  start=T0 + dt.timedelta(seconds=3), end=T0 + dt.timedelta(seconds=6))
    assert [r["pid"] for r in got] == [3, 4, 5]
    store.close()


def test_empty_answers_keep_their_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", [T])
    batches = list(store.execute("SELECT pid, name FROM samples"))
    assert len(batches) == 1 and batches[0].num_rows == 0
    assert [f.name for f in batches[0].schema.fields] == ["pid", "name"]
    store.close()


def test_row_cap_and_deadline(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05, row_cap=7)
    store.start()
    fill(store, 3000)
    assert len(collect(store, "SELECT * FROM samples")) == 7
    assert len(collect(store, "SELECT * FROM samples", row_limit=2)) == 2
    with pytest.raises(FragmentError, match="deadline"):  # 2.7e10 rows: interrupted, not awaited
        collect(store, "SELECT count(*) FROM samples a, samples b, samples c "
                       "WHERE (a.pid * 7 + b.pid * 13 + c.pid) % 1000003 = 17",
                timeout=0.3)
    store.close()


def test_refused_sql_never_reaches_duckdb(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", [T])
    for sql in ("DROP TABLE samples", "SELECT * FROM read_csv('/etc/passwd')", "SELECT getenv('HOME')"):
        with pytest.raises(FragmentError, match="refused"):
            collect(store, sql)
    assert collect(store, "SELECT count(*) AS n FROM samples") == [{"n": 0}]
    store.close()


def test_second_opener_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(path)!r}); print("open", flush=True); time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="in use by another process"):
            Store(path, [T])
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_loses_nothing_committed(tmp_path: Path) -> None:
    """An edge killed mid-ingest keeps every batch it committed."""
    path = tmp_path / "s.duckdb"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from tests.edge.test_store import T, rows
        from pxo.edge.store import Store
        s = Store(__import__("pathlib").Path({str(path)!r}), [T], flush_interval=0.05)
        s.start()
        for r in rows(500):
            s.append("samples", r)
        s.flush()                      # 500 rows committed
        for r in rows(100, start=500):
            s.append("samples", r)     # not flushed yet
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    store = Store(path, [T])
    n = collect(store, "SELECT count(*) AS n, count(DISTINCT pid) AS d FROM samples")[0]
    assert 500 <= n["n"] <= 600 and n["n"] == n["d"]  # all committed rows, no duplicates
    store.close()


def test_new_columns_are_added_to_an_old_store(tmp_path: Path) -> None:
    path = tmp_path / "s.duckdb"
    Store(path, [T]).close()
    wider = Table(T.name, T.description, (*T.columns, Column("extra", "BIGINT", "new in a later edge")))
    store = Store(path, [wider])
    assert collect(store, "SELECT extra FROM samples") == []
    store.close()


def test_retention_by_age_per_table(tmp_path: Path) -> None:
    other = Table("other", "", (TIME,))
    store = Store(tmp_path / "s.duckdb", [T, other], retention=dt.timedelta(days=30),
                  retention_by_table={"other": dt.timedelta(minutes=30)}, flush_interval=0.05)
    store.start()
    now = utc_now()
    for age_days in (0, 10, 29, 31, 400):
        store.append("samples", {"time": now - dt.timedelta(days=age_days), "pid": age_days, "name": ""})
    for age_min in (5, 45):
        store.append("other", {"time": now - dt.timedelta(minutes=age_min)})
    store.flush()
    store.enforce_retention()
    assert [r["pid"] for r in collect(store, "SELECT pid FROM samples ORDER BY pid")] == [0, 10, 29]
    assert len(collect(store, "SELECT * FROM other")) == 1
    store.close()


def test_retention_by_total_size_keeps_the_newest(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05, max_bytes=4 << 20,
                  retention_interval=3600)
    store.start()
    for r in rows(200_000):
        r["name"] = f"{r['pid']:08d}" * 8
        store.append("samples", r)
    store.flush(timeout=60)
    assert store.used_bytes() > 4 << 20
    store.enforce_retention()
    assert store.used_bytes() <= 4 << 20
    kept = collect(store, "SELECT min(pid) AS lo, max(pid) AS hi, count(*) AS n FROM samples")[0]
    assert kept["hi"] == 199_999 and kept["n"] < 200_000 and kept["lo"] == 200_000 - kept["n"]
    store.close()


@pytest.mark.requires_root("mounts a tiny tmpfs to fill it")
def test_full_disk_degrades_then_recovers_without_losing_rows(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        store = Store(disk / "s.duckdb", [T], flush_interval=0.05, max_bytes=1 << 40,
                      retention_interval=3600)
        store.start()
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leave almost nothing free
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for r in rows(20_000):
            r["name"] = "x" * 40
            store.append("samples", r)
        store.flush()
        status = store.status()
        assert status.state == "degraded" and "No space left on device" in status.detail
        assert "rows waiting" in status.detail
        filler.unlink()  # space comes back: the waiting rows are written
        store.flush()
        store.flush()
        assert store.status().state == "running"
        assert collect(store, "SELECT count(*) AS n FROM samples") == [{"n": 20_000}]
        assert store.rows_dropped == 0
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_answers_memory_goes_back_to_the_kernel_once_the_store_is_idle(tmp_path: Path) -> None:
    """DuckDB's jemalloc keeps freed pages until it next allocates: without edge/allocator's
    IdleRelease an edge kept each answer's peak resident between questions."""
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05, release_idle=0.3)
    store.start()
    fill(store, 3000)
    big = ("SELECT a.name, b.name AS other, count(*) AS n FROM samples a, samples b WHERE a.pid % 7 = b.pid % 7 "
           "GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 3")  # a 1.3-million-group hash table, tens of MiB
    cur = store._con.cursor()
    cur.execute(big).fetchall()
    cur.close()
    time.sleep(0.6)
    held = allocator.dirty_bytes()
    assert held is not None, "the locked DuckDB has no jemalloc to ask: edge/allocator.release() does nothing"
    assert held > 16 << 20, f"the control: a plain cursor's answer should leave its pages held, not {held} bytes"
    assert len(collect(store, big)) == 3
    deadline = time.monotonic() + 10
    while (after := allocator.dirty_bytes() or 0) >= 4 << 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after < 4 << 20, f"{after} bytes still held 10 s after Store.execute's answer"
    store.close()


def test_a_sources_bug_loses_its_rows_never_the_writer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A row for a table the store does not hold, or a row that is no dict, once ended the
    writer's thread: every row after it waited forever. Now those rows are left out, counted
    and logged, and the rows around them are committed."""
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05)
    store.start()
    try:
        store.append("samples", rows(1)[0])
        assert store.flush()
        store.append("no_such_table", {"pid": 1})
        assert store.flush()
        store.append("samples", None)  # type: ignore[arg-type]
        assert store.flush()
        for r in rows(3, start=1):
            store.append("samples", r)
        assert store.flush()
        assert [r["pid"] for r in collect(store, "SELECT pid FROM samples ORDER BY pid")] == [0, 1, 2, 3]
        assert store.rows_dropped == 2 and store.status().state == "running"
        assert "for a table it does not hold, 'no_such_table'" in caplog.text
        assert "1 row(s) of samples left out" in caplog.text
    finally:
        store.close()
