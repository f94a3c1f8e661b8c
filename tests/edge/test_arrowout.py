"""The edge's Arrow without pyarrow (edge/arrowout.py): rows in, answers out, cut where
the row cap or a gRPC message's size says, and read back by the collector's pyarrow."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pxo.common import arrowipc
from pxo.common.schema import Column, Table
from pxo.edge import arrowout
from pxo.edge.store import Store

T = Table("samples", "test rows", (
    Column("time", "TIMESTAMP", ""), Column("pid", "INTEGER", ""), Column("cgroup_id", "UBIGINT", ""),
    Column("name", "VARCHAR", ""), Column("ratio", "DOUBLE", ""), Column("main", "BOOLEAN", ""),
))
T0 = dt.datetime(2026, 12, 6, 12, 0, 0)


def decoded(batches: list[arrowout.Batch]) -> list[dict[str, object]]:
    """What the collector reads: each batch's IPC stream through pyarrow."""
    out: list[dict[str, object]] = []
    for b in batches:
        _, record_batches = arrowipc.decode(b.ipc())
        out.extend(r for rb in record_batches for r in rb.to_pylist())
    return out


def test_rows_keep_their_values_through_the_store_and_ipc(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05)
    store.start()
    aware = dt.datetime(2026, 12, 6, 13, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    store.append("samples", {"time": T0, "pid": 1, "cgroup_id": 2**64 - 1, "name": "ä", "ratio": 0.5, "main": True})
    store.append("samples", {"time": aware, "pid": 2.0, "cgroup_id": None, "name": 7, "ratio": 1, "main": None})
    store.flush()
    rows = decoded(list(store.execute("SELECT * FROM samples ORDER BY pid")))
    assert rows == [
        {"time": T0, "pid": 1, "cgroup_id": 2**64 - 1, "name": "ä", "ratio": 0.5, "main": True},
        # an aware time is stored in UTC; a whole float fits an INTEGER column, a number a VARCHAR
        {"time": T0, "pid": 2, "cgroup_id": None, "name": "7", "ratio": 1.0, "main": None},
    ]
    store.close()


def test_a_row_that_does_not_fit_is_left_out_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "s.duckdb", [T], flush_interval=0.05)
    store.start()
    store.append("samples", {"time": T0, "pid": 1})
    store.append("samples", {"time": T0, "pid": 2, "cgroup_id": -5})  # no negative UBIGINT
    store.append("samples", {"time": T0, "pid": "three"})
    store.append("samples", {"time": T0, "pid": 4})
    store.flush()
    assert [r["pid"] for b in store.execute("SELECT pid FROM samples ORDER BY pid") for r in b.to_pylist()] == [1, 4]
    assert store.rows_dropped == 2
    assert "cgroup_id=-5 does not fit UBIGINT" in caplog.text and "pid='three'" in caplog.text
    # and the writer lives on
    store.append("samples", {"time": T0, "pid": 5})
    store.flush()
    assert store.rows_written == 3
    store.close()


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("CREATE TABLE t AS SELECT range AS i, repeat('x', 40) || range AS s FROM range(300000)")
    return c


def test_the_cap_cuts_inside_a_chunk_and_keeps_the_order(con: duckdb.DuckDBPyConnection) -> None:
    batches = list(arrowout.read(con.cursor(), "SELECT i FROM t ORDER BY i DESC", None, 150_001, con.cursor))
    got = [r["i"] for r in decoded(batches)]
    assert got == list(range(299_999, 299_999 - 150_001, -1))


def test_big_answers_are_cut_into_messages_that_fit(con: duckdb.DuckDBPyConnection) -> None:
    batches = list(arrowout.read(con.cursor(), "SELECT * FROM t ORDER BY i", None, 10**9, con.cursor))
    assert len(batches) > 3  # 300,000 rows of ~50 bytes: more than three 3 MiB messages
    assert all(len(b.ipc()) <= arrowout.MESSAGE_BYTES for b in batches)
    rows = decoded(batches)
    assert [r["i"] for r in rows] == list(range(300_000))
    assert rows[123_456]["s"] == "x" * 40 + "123456"


def test_an_empty_answer_still_has_its_columns(con: duckdb.DuckDBPyConnection) -> None:
    (batch,) = arrowout.read(con.cursor(), "SELECT i, s FROM t WHERE i < $n", {"n": 0}, 10, con.cursor)
    schema, record_batches = arrowipc.decode(batch.ipc())
    assert schema.names == ["i", "s"] and sum(rb.num_rows for rb in record_batches) == 0


def test_the_edge_imports_neither_pyarrow_nor_the_kubernetes_client_outside_a_cluster(tmp_path: Path) -> None:
    code = ("import sys, tempfile; from pxo.edge.main import Edge, EdgeSettings; "
            "from pxo.common.settings import load_settings; "
            "e = Edge(load_settings(EdgeSettings, ['--data-dir', tempfile.mkdtemp(), '--sources', 'procfs'])); "
            "e.store.close(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'kubernetes', 'pandas', 'numpy'}))")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no kubeconfig, not in a pod
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_answers_take_the_one_plan_path_on_the_locked_duckdb(con: duckdb.DuckDBPyConnection) -> None:
    """arrowout.stream answers through DuckDB's private ``_submit``, which plans once, not a
    relation (``cursor.sql()``), which plans twice: 2.7 ms more per top-N fragment
    (bench/execute_cost.py shows the saving). An upgrade that drops ``_submit`` fails here."""

    class NoRelations:  # the cursor, but asking it for a relation fails the test
        def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
            self.cur = cur

        def sql(self, *_: object, **__: object) -> None:
            raise AssertionError("arrowout.stream built a relation: every answer is planned twice")

        def __getattr__(self, name: str) -> object:
            return getattr(self.cur, name)

    assert hasattr(con, "_submit"), "this DuckDB lacks _submit: arrowout.stream plans every answer twice"
    cur = NoRelations(con.cursor())
    first = next(iter(arrowout.stream(cur, "SELECT i FROM t WHERE i < $n ORDER BY i", {"n": 3})))  # type: ignore[arg-type]
    assert first.to_pylist() == [{"i": 0}, {"i": 1}, {"i": 2}]
    # a cursor left with a half-read answer (the cap reached) takes the next question
    assert next(iter(arrowout.stream(cur, "SELECT 42 AS x"))).to_pylist() == [{"x": 42}]  # type: ignore[arg-type]
