"""The language's semantics where they are easy to get wrong (docs/query-language.md
"Types", "Integers", "Nulls"): random expressions from the grammar over random rows,
distributed answer against the oracle (tests/helpers/oracle.py); each decision the
docs state, by example; integer overflow as one clear error; and the planner's column
types (known without asking DuckDB) against the types DuckDB gives."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pxo.collector import plan as planner
from pxo.collector.errors import IntegerOverflow
from tests.helpers.planner import CATALOG, NOW, check, distributed, rows_st

COLUMNS = {"int": ["pid", "bytes"], "float": ["score"], "string": ["pod", "ns", "node"], "bool": ["flag"],
           "time": ["time"]}


@st.composite
def expr(draw: st.DrawFn, kind: str, cols: dict[str, list[str]], depth: int = 0) -> str:
    """An expression of ``kind`` over the columns ``cols`` (kind -> names)."""
    def sub(k: str) -> str:
        return draw(expr(k, cols, depth + 1))
    leaf = depth >= 2 or draw(st.integers(0, 2)) == 0
    if kind == "int":
        if leaf:
            return draw(st.sampled_from([*cols["int"], "0", "3", "-3", "1KiB"]))
        form = draw(st.sampled_from(["+", "-", "*", "%", "neg", "abs", "bin", "strlen", "coalesce", "round"]))
        if form in "+-*%":
            return f"({sub('int')} {form} {sub('int')})"
        if form == "neg":
            return f"-({sub('int')})"
        if form == "bin":
            return f"bin({sub('int')}, {draw(st.sampled_from([1, 2, 5, 1000]))})"
        if form == "strlen":
            return f"strlen({sub('string')})"
        if form == "coalesce":
            return f"coalesce({sub('int')}, {sub('int')})"
        return f"{form}({sub('int')})"
    if kind == "float":
        if leaf:
            return draw(st.sampled_from([*cols["float"], "1.5", "0.25"]))
        form = draw(st.sampled_from(["/", "+", "*", "%", "sqrt", "round", "floor", "ceil", "bin", "abs"]))
        number = sub(draw(st.sampled_from(["int", "float"])))
        if form in "/+*%":
            return f"({sub('float') if form != '/' else number} {form} {sub(draw(st.sampled_from(['int', 'float'])))})"
        if form == "round":
            return f"round({sub('float')}, {draw(st.sampled_from([0, 1, -1]))})"
        if form == "bin":
            return f"bin({sub('float')}, 0.5)"
        return f"{form}({number if form == 'sqrt' else sub('float')})"
    if kind == "string":
        if leaf:
            return draw(st.sampled_from([*cols["string"], '"a"', '"x$end"']))
        form = draw(st.sampled_from(["lower", "upper", "strcat", "tostring", "coalesce"]))
        if form == "strcat":
            return f"strcat({sub('string')}, tostring({sub('int')}))"
        if form == "tostring":
            return f"tostring({sub(draw(st.sampled_from(['int', 'bool'])))})"
        if form == "coalesce":
            return f'coalesce({sub("string")}, "none")'
        return f"{form}({sub('string')})"
    if kind == "time":
        return draw(st.sampled_from(["time", "bin(time, 10m)", "time - 5m"])) if cols["time"] else "2026-11-24"
    if leaf:
        return draw(st.sampled_from([*cols["bool"], "true"]))
    form = draw(st.sampled_from(["cmp", "cmp", "text", "null", "not", "and", "or", "time"]))
    if form == "cmp":
        a, b = sub(draw(st.sampled_from(["int", "float"]))), sub(draw(st.sampled_from(["int", "float"])))
        return f"{a} {draw(st.sampled_from(['==', '!=', '<', '<=', '>', '>=']))} {b}"
    if form == "text":
        s = sub("string")
        return draw(st.sampled_from([f'{s} == "a"', f'{s} != "b"', f'{s} contains "A"', f'{s} =~ "^[ab]"',
                                     f'{s} in ("a", "Ab", null)', f'{s} !in ("c")', f'{s} < "b"']))
    if form == "null":
        x = sub(draw(st.sampled_from(["int", "float", "string"])))
        return draw(st.sampled_from([f"isnull({x})", f"isnotnull({x})", f"{x} == null", f"{x} != null"]))
    if form == "not":
        return f"not ({sub('bool')})"
    if form == "time" and cols["time"]:
        return f"{sub('time')} {draw(st.sampled_from(['<', '>=', '==']))} 2026-11-24T11:30:00Z"
    return f"({sub('bool')} {form if form in ('and', 'or') else 'and'} {sub('bool')})"


@st.composite
def expression_queries(draw: st.DrawFn) -> str:
    cols = {k: list(v) for k, v in COLUMNS.items()}
    parts = ["events"]
    if draw(st.booleans()):
        parts.append(f"where {draw(expr('bool', cols))}")
    kinds = draw(st.lists(st.sampled_from(["int", "int", "float", "string", "bool"]), min_size=1, max_size=2))
    items = []
    for i, k in enumerate(kinds):
        items.append(f"x{i} = {draw(expr(k, cols))}")
    parts.append("extend " + ", ".join(items))
    for i, k in enumerate(kinds):
        cols[k].append(f"x{i}")
    x, kx = "x0", kinds[0]
    if draw(st.booleans()):
        parts.append(f"where {draw(expr('bool', cols))}")
    last = draw(st.sampled_from(["", "summarize", "sort", "top", "take", "distinct", "project"]))
    if last == "summarize":
        aggs = ["c0 = count()", f"c1 = dcount({x})", f"c2 = min({x})", f"c3 = max({x})"]
        if kx in ("int", "float"):
            aggs += [f"c4 = sum({x})", f"c5 = avg({x})", f"c6 = stdev({x})", f"c7 = percentile_exact({x}, 50)",
                     f"c8 = p90({x})"]
        key = draw(st.sampled_from(["", " by pod", " by x1" if len(kinds) > 1 else " by ns", " by bin(time, 10m)"]))
        parts.append(f"summarize {', '.join(draw(st.lists(st.sampled_from(aggs), min_size=1, unique=True)))}{key}")
    elif last in ("sort", "top"):
        order = draw(st.sampled_from(["", " asc", " desc"]))
        parts.append(f"sort by {x}{order}" if last == "sort" else f"top {draw(st.integers(0, 4))} by {x}{order}")
    elif last == "take":
        parts.append(f"take {draw(st.integers(0, 4))}")
    elif last == "distinct":
        parts.append(f"distinct {x}")
    elif last == "project":
        parts.append(f"project {x}, pid")
    return " | ".join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st, n_nodes=st.integers(1, 4), text=expression_queries(), data=st.data())
def test_expressions_have_their_documented_values(rows: list[dict], n_nodes: int, text: str,
                                                  data: st.DataObject) -> None:
    assign = data.draw(st.lists(st.integers(0, n_nodes - 1), min_size=len(rows), max_size=len(rows)))
    check(text, rows, assign, n_nodes)  # every generated query is valid: a QueryError fails the test


# 64-bit edges: unsigned values from 2^63 and values near the signed limits
big_rows_st = st.lists(st.fixed_dictionaries({
    "time": st.just(NOW - dt.timedelta(seconds=1)),
    "pod": st.sampled_from(["a", "b"]),
    "ns": st.just("prod"),
    "pid": st.integers(-3, 3),
    "bytes": st.sampled_from([0, 1, 1 << 31, (1 << 62) + 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, None]),
    "score": st.just(1.0),
    "flag": st.just(None),
}), max_size=12)

WIDE_VALUES = ["events | extend x = bytes - pid", "events | extend x = bytes * 2 | summarize count()",
               "events | where bytes + 1 > 0", "events | summarize s = sum(bytes) * 2 + 1 by pod",
               "events | extend x = -bytes | top 2 by pid", "events | extend x = abs(bytes - 1) | take 1",
               "events | summarize n = count() by k = bin(bytes, 1000)", "events | extend x = bytes % 7 | distinct x",
               "events | sort by pid | extend x = bytes + bytes | take 3", "events | where bytes / 2 > 0",
               "events | extend x = coalesce(bytes, 0) | project x", "events | where bytes > -1 and bytes != 0",
               "events | extend x = bytes - 1 | top 2 by pid * bytes", "events | sort by pid | top 1 by bytes * 2"]


def test_a_sort_key_that_overflows_on_a_row_the_top_n_would_cut_is_still_reported() -> None:
    """An edge's top N sorts rows whose key overflowed as null keys, after its N others:
    one of them is shipped apart (render.py's _top_n), or the overflow went unreported."""
    row = {"time": NOW - dt.timedelta(seconds=1), "pod": "a", "ns": "prod", "score": 1.0, "flag": None}
    rows = [{**row, "pid": p, "bytes": b} for p, b in ((1, 1), (2, 1), (3, 1), (2, (1 << 63) - 1))]
    for n_nodes, assign in ((1, [0, 0, 0, 0]), (2, [0, 1, 0, 1])):
        for text in ("events | top 2 by pid * bytes", "events | sort by pid * bytes, pod | take 2"):
            check(text, rows, assign, n_nodes)  # the oracle overflows: so must the planner, naming pid * bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=big_rows_st, n_nodes=st.integers(1, 3), text=st.sampled_from(WIDE_VALUES), data=st.data())
def test_an_integer_overflow_is_one_error_naming_the_expression(rows: list[dict], n_nodes: int, text: str,
                                                                 data: st.DataObject) -> None:
    assign = data.draw(st.lists(st.integers(0, n_nodes - 1), min_size=len(rows), max_size=len(rows)))
    check(text, rows, assign, n_nodes)


def _rows(**columns: list[object]) -> list[dict]:
    n = len(next(iter(columns.values())))
    base = {"time": NOW - dt.timedelta(seconds=1), "pod": "a", "ns": "prod", "pid": 0, "bytes": 0, "score": 0.0,
            "flag": None}
    return [{**base, "time": base["time"] - dt.timedelta(seconds=i), **{k: v[i] for k, v in columns.items()}}
            for i in range(n)]


def _answer(text: str, rows: list[dict], nodes: int = 2) -> list[dict]:
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    return distributed(plan, rows, [i % nodes for i in range(len(rows))], nodes).to_pylist()


def test_unsigned_columns_are_signed_ints_in_arithmetic() -> None:
    """headroom = limit - usage is negative when usage is over the limit: not an error."""
    rows = _rows(bytes=[100, 5, None], pid=[7, 9, 1])
    got = _answer("events | extend headroom = pid - bytes, neg = -bytes | project headroom, neg", rows)
    assert [(r["headroom"], r["neg"]) for r in got] == [(-93, -100), (4, -5), (None, None)]


def test_overflow_names_the_expression_and_where_it_is() -> None:
    rows = _rows(bytes=[1 << 40, 3])
    with pytest.raises(IntegerOverflow) as e:
        _answer("events | last 1h\n| extend x = bytes * 1TiB", rows)
    assert e.value.expression == "bytes * 1TiB"
    assert e.value.message.startswith("integer overflow in bytes * 1TiB: ")
    assert (e.value.line, e.value.column) == (2, 20) and "float" in e.value.hint
    got = _answer("events | extend x = bytes * 1.0 * 1TiB | project x", rows)
    assert sorted(r["x"] for r in got) == [float(3 << 40), float(1 << 80)]


@pytest.mark.parametrize("text, want", [
    # nulls sort last, ascending and descending
    ("events | sort by score asc | project score", [-1.0, 2.0, None]),
    ("events | sort by score desc | project score", [2.0, -1.0, None]),
    # % takes the dividend's sign; x % 0 is null
    ("events | extend m = pid % 3, n = pid % -3, z = pid % 0 | project m, n, z | sort by m",
     [(1, 1, None), (0, 0, None), (-1, -1, None)]),
    # / always divides exactly, as floats (x / 0 is infinite); bin rounds down, negative numbers too
    ("events | extend q = pid / 2, b = bin(pid, 5), i = pid / 0 | project q, b, i | sort by q",
     [(3.5, 5, float("inf")), (0.0, 0, float("nan")), (-3.5, -10, float("-inf"))]),
    # a comparison with null is null: where keeps neither the row nor its negation
    ("events | where score > 0 or not (score > 0) | project score", [-1.0, 2.0]),
    # stdev of one value is null, as of none
    ("events | summarize s = stdev(score), n = count() by pod | sort by pod asc",
     [("a", None, 1), ("b", 2.1213203435596424, 2)]),
    ("events | where pid == 7 | summarize s = stdev(score)", [None]),
    # extend replaces a column in its place and puts a new one last; take without a time
    # column takes the first rows by every column
    ("events | extend pid = pid * 10, new = 1 | project-away time, node, ns, bytes, flag | take 1",
     [("a", 0, None, 1)]),
])
def test_documented_decisions(text: str, want: list[object]) -> None:
    rows = _rows(pid=[7, 0, -7], score=[2.0, None, -1.0], pod=["b", "a", "b"])
    got = [tuple(r.values()) if len(r) > 1 else next(iter(r.values())) for r in _answer(text, rows)]
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        gs, ws = (g, w) if isinstance(g, tuple) else ((g,), (w,))
        assert all(x == y or (x != x and y != y) for x, y in zip(gs, ws, strict=True)), (got, want)


TYPED = ["events | extend a = pid + 1, b = bytes - pid, c = pid / 2, d = score * pid, e = pid % 2, f = -pid",
         "events | extend g = abs(pid), h = floor(score), i = round(score, 1), j = sqrt(pid), k = strlen(pod)",
         "events | extend l = bin(pid, 5), m = bin(score, 0.5), n = bin(time, 5m), o = time - 5m, p = time - time",
         "events | extend q = coalesce(pid, 0), r = coalesce(bytes, pid), s = strcat(pod, pid), t = tostring(flag)",
         "events | extend u = null, v = 1.5, w = 7, x = 5m, y = format_bytes(pid), z = coalesce(pod, null)",
         "events | summarize count(), sum(pid), sum(bytes), sum(score), avg(pid), min(bytes), max(pod), dcount(ns), "
         "stdev(pid), percentile_exact(pid, 50), p99(bytes), countif(flag) by pod, bin(time, 1h)",
         "events | distinct pod, pid", "events | top 3 by pid", "events | sort by pod | take 2"]


@pytest.mark.parametrize("text", TYPED)
def test_the_planned_types_are_duckdbs(text: str) -> None:
    """The planner knows every column's type from the catalog and the language's rules:
    the edge's fragment, run by DuckDB, gives exactly those types."""
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    (fragment,) = plan.fragments.values()
    con = duckdb.connect()
    con.execute('CREATE TABLE events ("time" TIMESTAMP, pod VARCHAR, ns VARCHAR, pid INTEGER, bytes UBIGINT, '
                "score DOUBLE, flag BOOLEAN)")
    rel = con.sql(fragment.sql("n0"))
    assert list(zip(rel.columns, map(str, rel.types), strict=True)) == list(fragment.columns)
