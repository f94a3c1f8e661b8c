"""Exactness, proven by property: for random rows, random ways of spreading them
over 1..5 nodes (some possibly empty) and random queries from the grammar, the
distributed answer (plan -> each node's own DuckDB runs its fragment -> the
executor's merge and final step) is the answer the documented semantics give over
every row at once: that of tests/helpers/oracle.py, an evaluator in plain Python
that shares no code with the planner. In-process, no gRPC: the merge is the
executor's own code path.

The one documented exception is the sketch percentiles (percentile, p50...p99):
the plan names their columns as approximate, and a bare one is within
RELATIVE_ERROR of the exact nearest-rank value the oracle computes."""

from __future__ import annotations

import datetime as dt
import math
import re

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from pxo.collector import plan as planner
from pxo.collector.errors import QueryError
from pxo.collector.executor import merge_and_finish
from tests.helpers.planner import (
    CATALOG,
    NOW,
    TABLE,
    assert_same,
    check,
    distributed,
    expected,
    rows_st,
    within_sketch_error,
)

NUMERIC = ["pid", "bytes", "score"]
PREDICATES = ['pod == "a"', "pid > 3", "bytes >= 1KiB", 'pod =~ "^[ab]"', 'pod in ("a", "b")', "isnull(score)",
              "isnotnull(pod)", "not (pid < 5)", 'node == "n1"', 'node in ("n0", "n2")', 'node != "n0"',
              'pod contains "A"', "score * 2 > pid", "pod == null", "flag", "time > 2026-11-24T11:30:00Z",
              "pid % 3 == 1 or score < 0", 'ns != "dev" and pid <= 6', 'pod !in ("c")', 'pod != "a$start"']


@st.composite
def queries(draw: st.DrawFn) -> str:
    cols = ["node", "time", "pod", "ns", "pid", "bytes", "score", "flag"]
    parts = ["events"]
    parts.append(draw(st.sampled_from(["", "last 1h", "since 2026-11-24T11:00:00Z",
                                       "between 2026-11-24T10:00:00Z and 2026-11-24T11:30:00Z"])))
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["where", "where", "extend", "project"]))
        if kind == "where":
            preds = [p for p in PREDICATES if all(w in cols or not w.isidentifier() for w in _words(p))]
            if preds:
                parts.append("where " + " and ".join(draw(st.lists(st.sampled_from(preds), min_size=1, max_size=2))))
        elif kind == "extend" and {"pid", "bytes", "time"} <= set(cols):
            name = draw(st.sampled_from(["kb", "b5", "t", "x"]))
            expr = {"kb": "bytes / 1024", "b5": "bin(pid, 5)", "t": "bin(time, 10m)", "x": "pid % 3 + 1"}[name]
            parts.append(f"extend {name} = {expr}")
            if name not in cols:
                cols.append(name)
        elif kind == "project":
            keep = draw(st.lists(st.sampled_from(cols), min_size=1, unique=True))
            if draw(st.booleans()):
                parts.append("project " + ", ".join(keep))
                cols = keep
            elif len(keep) < len(cols):
                parts.append("project-away " + ", ".join(keep))
                cols = [c for c in cols if c not in keep]
    numeric = [c for c in cols if c in NUMERIC]
    kind = draw(st.sampled_from(["none", "summarize", "summarize", "summarize", "distinct", "sorttake", "top",
                                 "take", "sort"]))
    if kind == "summarize":
        aggs = []
        for i in range(draw(st.integers(0, 4))):
            fn = draw(st.sampled_from(["count", "countif", "sum", "min", "max", "avg", "dcount", "stdev",
                                       "percentile", "p50", "p90", "percentile_exact"]))
            if fn == "count":
                aggs.append(f"c{i} = count()")
            elif fn == "countif" and "pid" in cols:
                aggs.append(f"c{i} = countif(pid > 2)")
            elif fn in ("min", "max", "dcount") and cols:
                aggs.append(f"c{i} = {fn}({draw(st.sampled_from(cols))})")
            elif numeric:
                x = draw(st.sampled_from(numeric))
                if fn in ("percentile", "percentile_exact"):
                    aggs.append(f"c{i} = {fn}({x}, {draw(st.sampled_from([0, 10, 25, 50, 75, 99.9, 100]))})")
                elif fn != "countif":
                    aggs.append(f"c{i} = {fn}({x})")
        if aggs and draw(st.booleans()):
            aggs[0] = aggs[0] + " * 2 + 1"
        candidates = ([k for k in ["pod", "node", "ns", "flag"] if k in cols]
                      + (["bin(time, 10m)"] if "time" in cols else []) + (["k = pid % 3"] if "pid" in cols else []))
        keys = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=2)) if candidates else []
        if not aggs and not keys:
            aggs = ["c0 = count()"]
        parts.append("summarize " + ", ".join(aggs) + (" by " + ", ".join(keys) if keys else ""))
        out = [k.split(" = ")[0] if " = " in k else ("time" if k.startswith("bin") else k) for k in keys]
        out += [a.split(" = ")[0] for a in aggs]
        # A stdev is computed another way than on one database (equal up to rounding), and a
        # sketch percentile is approximate, so ordering or filtering by them could flip: order
        # by the others.
        out = [o for o in out if not any(a.startswith((f"{o} = stdev", f"{o} = p", f"{o} = percentile("))
                                         for a in aggs)]
        follow = draw(st.sampled_from(["", "top", "where", "sorttake", "take"])) if out else ""
        if follow == "top":
            parts.append(f"top {draw(st.integers(0, 4))} by {draw(st.sampled_from(out))} "
                         f"{draw(st.sampled_from(['asc', 'desc']))}")
        elif follow == "where" and "c0" in out:
            parts.append("where c0 > 1")
        elif follow == "sorttake":
            parts.append(f"sort by {draw(st.sampled_from(out))} asc")
            parts.append(f"take {draw(st.integers(0, 5))}")
        elif follow == "take":
            parts.append(f"take {draw(st.integers(0, 5))}")
    elif kind == "distinct":
        parts.append("distinct " + (", ".join(draw(st.lists(st.sampled_from(cols), min_size=1, unique=True)))
                                    if draw(st.booleans()) else "*"))
    elif kind in ("sorttake", "top", "sort"):
        key = draw(st.sampled_from(cols))
        order = draw(st.sampled_from(["", " asc", " desc"]))
        n = draw(st.integers(0, 6))
        if kind == "top":
            parts.append(f"top {n} by {key}{order}")
        else:
            parts.append(f"sort by {key}{order}")
            if kind == "sorttake":
                parts.append(f"take {n}")
        if draw(st.booleans()) and "pid" in cols:
            parts.append("where pid > 0")
    elif kind == "take":
        parts.append(f"take {draw(st.integers(0, 6))}")
    return " | ".join(p for p in parts if p)


def _words(pred: str) -> list[str]:
    import re

    return [w for w in re.findall(r"[A-Za-z_]\w*", re.sub(r'"[^"]*"', "", pred))
            if w not in ("and", "or", "not", "in", "contains", "isnull", "isnotnull", "null", "T", "Z")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st, n_nodes=st.integers(1, 5), text=queries(), data=st.data())
def test_distributed_answer_is_the_documented_one(rows: list[dict], n_nodes: int, text: str,
                                                  data: st.DataObject) -> None:
    assign = data.draw(st.lists(st.integers(0, n_nodes - 1), min_size=len(rows), max_size=len(rows)))
    try:
        plan = check(text, rows, assign, n_nodes)
    except QueryError:
        return  # e.g. a sort key the generator projected away: refused cleanly, nothing to compare
    sketched = re.findall(r"\b(c\d+) = (?:percentile|p50|p90)\(", text)
    columns = merge_and_finish(plan, [], 10)[0].column_names
    assert set(plan.approximate) == set(sketched) & set(columns), (text, plan.approximate)


def test_the_percentile_rank_matches_quantile_disc() -> None:
    # The collector finishes percentiles from weighted values with DuckDB's own rank rule
    # (and the docs and the oracle state it): check the rule against quantile_disc itself
    # for every n up to 300 and awkward q.
    qs = [0, 0.1, 1, 5, 10, 12.5, 25, 29, 33.3, 50, 57, 66.7, 75, 90, 95, 99, 99.9, 100]
    con = duckdb.connect()
    for q in qs:
        lit = f"CAST({q / 100!r} AS DOUBLE)"
        bad = con.execute(f"""
            SELECT n, quantile_disc(x, {lit}) AS got FROM range(1, 301) a(n), LATERAL (SELECT range AS x FROM range(n))
            GROUP BY n
            HAVING got <> greatest(1, CAST(n AS DOUBLE) - floor(CAST(n AS DOUBLE) - {lit} * CAST(n AS DOUBLE))) - 1
        """).fetchall()
        assert bad == [], q


@st.composite
def ordered_queries(draw: st.DrawFn) -> str:
    """top-N pushdown, where ties decide: few distinct keys, small N."""
    key = draw(st.sampled_from(["pod", "ns", "flag", "node", "pid % 2", "bytes", "score"]))
    order = draw(st.sampled_from(["", " asc", " desc"]))
    n = draw(st.integers(0, 4))
    head = draw(st.sampled_from(["", " | where pid > 0", " | extend p2 = pid % 2"]))
    op = draw(st.sampled_from([f"top {n} by {key}{order}", f"sort by {key}{order}, ns | take {n}", f"take {n}"]))
    tail = draw(st.sampled_from(["", " | project pod, pid", " | summarize count() by pod"]))
    return f"events{head} | {op}{tail}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st.filter(lambda r: len(r) >= 3), n_nodes=st.integers(1, 5), text=ordered_queries(), data=st.data())
def test_top_n_pushdown_is_exact_under_ties(rows: list[dict], n_nodes: int, text: str, data: st.DataObject) -> None:
    assign = data.draw(st.lists(st.integers(0, n_nodes - 1), min_size=len(rows), max_size=len(rows)))
    check(text, rows, assign, n_nodes)


def _edge_scan_columns(sql: str) -> list[str]:
    """The columns an edge's fragment reads from its table (its first stage's SELECT)."""
    scan = next(s for s in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Select)
                if isinstance(s.args["from_"].this, exp.Table) and s.args["from_"].this.name == "events")
    return sorted(e.alias_or_name for e in scan.expressions)


@pytest.mark.parametrize("text, reads", [
    ("events | summarize n = count() by pod", ["pod"]),
    ("events | summarize n = count()", []),
    ("events | where pid > 3 | extend pod = ns | summarize s = sum(bytes) by pod", ["ns", "pid", "bytes"]),
    ("events | project-away pod | summarize n = dcount(ns) by bin(time, 5m)", ["time", "ns"]),
    ("events | project p = pid * 2, ns | summarize p99(p) by ns", ["pid", "ns"]),
    ("events | distinct pod", ["pod"]),
])
def test_an_edge_that_summarizes_reads_only_the_columns_it_uses(text: str, reads: list[str]) -> None:
    rows = [{"time": NOW - dt.timedelta(seconds=i), "pod": "ab"[i % 2], "ns": ["prod", "dev"][i % 3 == 0],
             "pid": i, "bytes": i * 1000, "score": i / 4, "flag": i % 2 == 0} for i in range(20)]
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    assert _edge_scan_columns(plan.fragments["events"].sql("n0")) == sorted(
        ["node", *(c for c in TABLE.column_names if c in reads)])
    assign = [i % 3 for i in range(len(rows))]
    assert_same(distributed(plan, rows, assign, 3), expected(text, rows, assign), text, plan.approximate)


def test_top_n_pushdown_orders_nan_and_infinities_like_one_duckdb() -> None:
    """NaN sorts above +inf in DuckDB: the edge's threshold and its filter must agree."""
    values = [float("nan"), float("nan"), float("inf"), 2.0, 2.0, float("-inf"), None, None, 0.0]
    rows = [{"time": NOW - dt.timedelta(seconds=1), "pod": f"p{i}", "ns": "prod", "pid": i, "bytes": 1,
             "score": v, "flag": None} for i, v in enumerate(values)]
    for text in ["events | top 1 by score", "events | top 3 by score", "events | top 2 by score asc",
                 "events | top 9 by score asc", "events | top 8 by score", "events | sort by score | take 4"]:
        plan = planner.plan_pipe(text, CATALOG, now=NOW)
        for assign in ([0] * len(rows), [i % 3 for i in range(len(rows))], [i // 4 for i in range(len(rows))]):
            assert_same(distributed(plan, rows, assign, 3), expected(text, rows, assign), text)


# -- the sketch percentiles' error bound ------------------------------------------------

wide_rows_st = st.lists(st.fixed_dictionaries({
    "time": st.just(NOW - dt.timedelta(seconds=1)),
    "pod": st.sampled_from(["a", "b", None]),
    "ns": st.just("prod"),
    "pid": st.integers(-(1 << 31), (1 << 31) - 1),
    "bytes": st.one_of(st.none(), st.integers(0, (1 << 64) - 1)),
    # normal doubles of any size and sign (subnormals are exempt from the bound: see the docs)
    "score": st.one_of(st.none(), st.just(0.0), st.floats(allow_nan=False, allow_infinity=False,
                                                          allow_subnormal=False)),
    "flag": st.just(None),
}), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=wide_rows_st, n_nodes=st.integers(1, 4), x=st.sampled_from(["pid", "bytes", "score"]),
       agg=st.sampled_from(["p50", "p90", "p95", "p99", "percentile"]),
       q=st.sampled_from([0, 1, 33.3, 50, 99, 100]), by=st.booleans(), data=st.data())
def test_sketch_percentiles_are_within_their_error_bound(rows: list[dict], n_nodes: int, x: str, agg: str,
                                                         q: float, by: bool, data: st.DataObject) -> None:
    call = f"percentile({x}, {q})" if agg == "percentile" else f"{agg}({x})"
    text = f"events | summarize v = {call}" + (" by pod" if by else "")
    assign = data.draw(st.lists(st.integers(0, n_nodes - 1), min_size=len(rows), max_size=len(rows)))
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    assert plan.approximate == ("v",)
    got = {r.get("pod"): r["v"] for r in distributed(plan, rows, assign, n_nodes).to_pylist()}
    want = {r.get("pod"): r["v"] for r in expected(text, rows, assign)[1]}
    assert got.keys() == want.keys()
    for k, w in want.items():
        assert within_sketch_error(got[k], w), (text, k, got[k], w)


def test_sketch_percentiles_keep_infinities_nan_and_zero() -> None:
    values = [float("-inf"), -5.0, 0.0, 0.0, 3.0, float("inf"), float("nan")]
    rows = [{"time": NOW - dt.timedelta(seconds=1), "pod": "a", "ns": "prod", "pid": 1, "bytes": 1,
             "score": v, "flag": None} for v in values]
    for q, want in [(0, float("-inf")), (30, 0.0), (45, 0.0), (85, float("inf"))]:
        text = f"events | summarize v = percentile(score, {q})"
        plan = planner.plan_pipe(text, CATALOG, now=NOW)
        got = distributed(plan, rows, [i % 2 for i in range(len(rows))], 2).to_pylist()[0]["v"]
        exact = expected(text, rows, [0] * len(rows))[1][0]["v"]
        assert got == want == exact, (q, got, exact)
    text = "events | summarize v = percentile(score, 100)"
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    got = distributed(plan, rows, [i % 2 for i in range(len(rows))], 2).to_pylist()[0]["v"]
    assert math.isnan(got) and math.isnan(expected(text, rows, [0] * len(rows))[1][0]["v"])


def test_sketch_percentile_of_a_time_is_refused_with_a_pointer_to_the_exact_one() -> None:
    try:
        planner.plan_pipe("events | summarize p99(time) by pod", CATALOG, now=NOW)
    except QueryError as exc:
        assert "p99() is approximate and takes a number, not TIMESTAMP" in exc.message
        assert (exc.line, exc.column) == (1, 20)
        assert "percentile_exact" in exc.hint
    else:
        raise AssertionError("a percentile of times was planned")
    plan = planner.plan_pipe("events | summarize percentile_exact(time, 99) by pod", CATALOG, now=NOW)
    assert plan.approximate == ()
