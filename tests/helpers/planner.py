"""Running a query the distributed way in process, and holding its answer to the oracle.

``distributed``: the plan's fragment runs on each node's own DuckDB (its share of the
rows), as an edge runs it (gated, $start and $end bound the way edge/store.py finds
them), then the executor's own merge and final step. ``expected``: the oracle's answer
(tests/helpers/oracle.py) over every row with its node. ``assert_same`` compares
them: exactly, but floating-point sums and the like to 1e-9, and the approximate
percentiles within the documented bound."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import strategies as st

from pxo.collector import plan as planner
from pxo.collector.errors import IntegerOverflow
from pxo.collector.executor import merge_and_finish
from pxo.common import sqlgate
from pxo.common.schema import TIME, Column, Table
from tests.helpers import oracle

TABLE = Table("events", "test rows", (
    TIME,
    Column("pod", "VARCHAR", ""),
    Column("ns", "VARCHAR", ""),
    Column("pid", "INTEGER", ""),
    Column("bytes", "UBIGINT", ""),
    Column("score", "DOUBLE", ""),
    Column("flag", "BOOLEAN", ""),
))
CATALOG = {"events": TABLE}
KINDS = {"node": "string", "time": "time", "pod": "string", "ns": "string", "pid": "int", "bytes": "int",
         "score": "float", "flag": "bool"}
NOW = dt.datetime(2026, 11, 24, 12, 0, 0)
CAP = 10_000
NODES = ["n0", "n1", "n2", "n3", "n4"]

# Few distinct values (ties), nulls, negative numbers, times on 10-minute edges (NOW is on
# one, and s % 7 == 0 keeps a row on its edge).
rows_st = st.lists(st.fixed_dictionaries({
    "time": st.integers(0, 7200).map(lambda s: NOW - dt.timedelta(seconds=s, microseconds=s % 7)),
    "pod": st.sampled_from(["a", "b", "Ab", "c", None]),
    "ns": st.sampled_from(["prod", "dev"]),
    "pid": st.integers(-3, 12),
    "bytes": st.sampled_from([0, 1, 1000, 1024, 4096, 1 << 20, 1 << 40, None]),
    "score": st.one_of(st.none(), st.integers(-8, 8).map(lambda i: i / 4)),  # exact in binary
    "flag": st.one_of(st.none(), st.booleans()),
}), max_size=40)


def _load(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    cols = ", ".join(f'"{c.name}" {c.type}' for c in TABLE.columns)
    con.execute(f"CREATE TABLE events ({cols})")
    if rows:
        con.executemany(f"INSERT INTO events VALUES ({', '.join('?' for _ in TABLE.columns)})",
                        [[r[n] for n in TABLE.column_names] for r in rows])


def _params(plan: planner.Plan, sql: str) -> dict[str, object] | None:
    """What an edge binds: $start and $end, when it finds them in the text (edge/store.py)."""
    params = {k: v for k, v in (("start", plan.start), ("end", plan.end)) if f"${k}" in sql}
    return params or None


def distributed(plan: planner.Plan, rows: list[dict[str, Any]], assign: list[int], n_nodes: int) -> pa.Table:
    parts = []
    for i in range(n_nodes):
        node = NODES[i]
        if plan.skip_reason(node):
            continue
        con = duckdb.connect()
        _load(con, [r for r, a in zip(rows, assign, strict=True) if a == i])
        tables = {}
        for name, frag in plan.fragments.items():
            sql = frag.sql(node)
            sqlgate.check(sql, CATALOG)  # what an edge would refuse, the planner must never produce
            limit = plan.edge_row_limit if 0 < plan.edge_row_limit <= CAP else CAP + 1
            tables[name] = con.sql(sql, params=_params(plan, sql)).to_arrow_table().slice(0, limit)
        con.close()
        parts.append((node, tables))
    answer, truncated = merge_and_finish(plan, parts, CAP)
    assert not truncated
    return answer


def expected(text: str, rows: list[dict[str, Any]], assign: list[int]) -> tuple[list[str], list[dict[str, Any]]]:
    with_node = [{"node": NODES[a], **r} for r, a in zip(rows, assign, strict=True)]
    return oracle.evaluate(text, KINDS, with_node, now=NOW)


def _same(a: object, b: object) -> bool:
    if isinstance(a, pa.MonthDayNano):
        a = dt.timedelta(days=a.days, microseconds=a.nanoseconds // 1000)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, decimal.Decimal | int) and isinstance(b, decimal.Decimal | int):
        return decimal.Decimal(a) == decimal.Decimal(b)
    if isinstance(a, float | int | decimal.Decimal) and isinstance(b, float | int | decimal.Decimal):
        x, y = float(a), float(b)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def within_sketch_error(got: object, want: object) -> bool:
    if got is None or want is None:
        return got is None and want is None
    g, w = float(got), float(want)  # type: ignore[arg-type]
    if math.isnan(w) or math.isinf(w):
        return g == w or (math.isnan(g) and math.isnan(w))
    return abs(g - w) <= planner.RELATIVE_ERROR * abs(w) * (1 + 1e-9) + 1e-300


def assert_same(got: pa.Table, want: tuple[list[str], list[dict[str, Any]]], text: str,
                approximate: tuple[str, ...] = ()) -> None:
    """Equal, but for the sketch percentile columns ``approximate``: a bare one
    (``c0 = p50(x)``) within the sketch's error; one in an expression, null alike."""
    columns, rows = want
    assert got.column_names == columns, (text, got.column_names, columns)
    bare = set(re.findall(r"\b(c\d+) = (?:percentile|p50|p90|p95|p99)\([^()]*\)(?! \*)", text))
    g = got.to_pylist()
    assert len(g) == len(rows), (text, g, rows)
    for rg, rw in zip(g, rows, strict=True):
        for c in columns:
            if c in bare:
                assert within_sketch_error(rg[c], rw[c]), (text, c, rg, rw)
            elif c in approximate:
                assert (rg[c] is None) == (rw[c] is None), (text, c, rg, rw)
            else:
                assert _same(rg[c], rw[c]), (text, c, rg, rw)


def check(text: str, rows: list[dict[str, Any]], assign: list[int], n_nodes: int) -> planner.Plan:
    """The distributed answer is the oracle's, or both fail with an integer overflow (the
    planner's error naming one of the expressions the oracle saw overflow)."""
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    sqlgate.check(plan.final_sql, CATALOG)
    try:
        want = expected(text, rows, assign)
    except oracle.Overflow as overflow:
        try:
            distributed(plan, rows, assign, n_nodes)
        except IntegerOverflow as exc:
            assert exc.expression in overflow.texts, (text, exc.message, overflow.texts)
            return plan
        raise AssertionError(f"{text}: no overflow reported; the oracle saw {overflow.texts}") from None
    assert_same(distributed(plan, rows, assign, n_nodes), want, text, plan.approximate)
    return plan
