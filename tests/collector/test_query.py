"""The pipe language's parser and the planner's time bounds."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pxo.collector import plan as planner
from pxo.collector.errors import QueryError, UnknownTable
from pxo.collector.executor import merge_and_finish
from pxo.collector.plan import compile
from pxo.collector.plan import sql as sqltree
from pxo.collector.query import Last, Take, parse
from pxo.common import sqlgate
from pxo.common.schema import TIME, Column, Table

CATALOG = {"oom_events": Table("oom_events", "", (TIME, Column("pid", "INTEGER", ""))),
           "kill_events": Table("kill_events", "", (TIME,))}
NOW = dt.datetime(2026, 11, 24, 12, 0, 0)


@pytest.mark.parametrize("text,seconds", [("oom_events | last 30s", 30), ("oom_events|last 15m", 900),
                                          ("oom_events | last 1h", 3600), ("oom_events | LAST 2d", 172800),
                                          ("oom_events | last 1w", 604800)])
def test_durations(text: str, seconds: int) -> None:
    plan = planner.plan_pipe(text, CATALOG, now=NOW)
    assert (plan.start, plan.end) == (NOW - dt.timedelta(seconds=seconds), NOW)


def test_pipeline_shape() -> None:
    p = parse("oom_events | last 1h | take 5")
    assert p.table == "oom_events" and p.ops == [Last(3600, 13), Take(5, 23)]


@pytest.mark.parametrize("text,column,fragment", [
    ("oom_events | last 1x", 19, "expected a duration"),
    ("oom_events | last", 18, "found the end of the query"),
    ("oom_events | lats 1h", 14, "unknown operator 'lats'"),
    ("oom_events last 1h", 12, "expected '|'"),
    ("| last 1h", 1, "expected a table name"),
    ("oom_events | last 1h | last 2h", 24, "given twice"),
    ("oom_events | last 0s", 19, "between 1s and 3650d"),
    ("oom_events | take x", 19, "expected a row count"),
    ("oom_events # last", 12, "unexpected character '#'"),
])
def test_errors_point_at_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(QueryError) as e:
        parse(text)
    assert (e.value.line, e.value.column) == (1, column)
    assert fragment in e.value.message


def test_errors_on_later_lines() -> None:
    with pytest.raises(QueryError) as e:
        parse("oom_events\n| last 1h\n| nope")
    assert (e.value.line, e.value.column) == (3, 3)


def test_time_range_is_resolved_once_into_absolute_bounds() -> None:
    plan = planner.plan_pipe("oom_events | last 1h", CATALOG, now=NOW)
    assert (plan.start, plan.end) == (NOW - dt.timedelta(hours=1), NOW)
    sql = plan.fragments["oom_events"].sql("node-a")
    assert sql == ('WITH "__pxo_s0" AS NOT MATERIALIZED (SELECT \'node-a\' AS "node", "time", "pid" FROM "oom_events" '
                   'WHERE "time" >= $start AND "time" < $end) SELECT * FROM "__pxo_s0"')
    assert "now()" not in sql.lower()


def test_unknown_table_suggests_and_lists() -> None:
    with pytest.raises(QueryError) as e:
        planner.plan_pipe("oom_event | last 1h", CATALOG, now=NOW)
    assert e.value.message == "unknown table 'oom_event'" and e.value.column == 1
    assert e.value.hint == "did you mean oom_events? tables: kill_events, oom_events"
    assert isinstance(e.value, UnknownTable) and e.value.table == "oom_event"
    with pytest.raises(QueryError, match="no edge has registered"):
        planner.plan_pipe("oom_events | last 1h", {}, now=NOW)


def test_sql_form_is_gated() -> None:
    with pytest.raises(QueryError, match="only SELECT"):
        planner.plan_sql("DROP TABLE oom_events", CATALOG)
    with pytest.raises(UnknownTable) as u:
        planner.plan_sql("SELECT * FROM Kill_Event", CATALOG)
    assert u.value.hint.startswith("did you mean kill_events?") and u.value.table == "Kill_Event"
    plan = planner.plan_sql("SELECT count(*) FROM oom_events", CATALOG)
    assert plan.fragments["oom_events"].sql("node-a") == 'SELECT * FROM "oom_events"'
    assert plan.fragments["oom_events"].add_node


# -- the full language ----------------------------------------------------------------

FULL = {"oom_events": Table("oom_events", "", (
    TIME, Column("pid", "INTEGER", ""), Column("comm", "VARCHAR", ""), Column("namespace", "VARCHAR", ""),
    Column("pod", "VARCHAR", ""), Column("anon_rss_bytes", "UBIGINT", ""))),
    "container_memory": Table("container_memory", "", (
        TIME, Column("pod", "VARCHAR", ""), Column("usage_bytes", "UBIGINT", ""),
        Column("cgroup_path", "VARCHAR", "")))}


@pytest.mark.parametrize("text,columns", [
    ("oom_events | last 1h", ["node", "time", "pid", "comm", "namespace", "pod", "anon_rss_bytes"]),
    ('oom_events | last 24h | where namespace == "prod" and comm =~ "java.*" | summarize kills = count() by pod '
     "| top 10 by kills", ["pod", "kills"]),
    ("container_memory | last 10m | summarize rate = sum(usage_bytes) / 600 by cgroup_path | sort by rate desc "
     "| take 20", ["cgroup_path", "rate"]),
    ("container_memory | last 6h | summarize peak = max(usage_bytes) by bin(time, 5m), pod", ["time", "pod", "peak"]),
    ("oom_events | project pid, comm, mb = anon_rss_bytes / 1MiB", ["pid", "comm", "mb"]),
    ("oom_events | project-away time, node | extend big = anon_rss_bytes > 512MiB",
     ["pid", "comm", "namespace", "pod", "anon_rss_bytes", "big"]),
    ("oom_events | summarize count(), dcount(pod), p99(anon_rss_bytes), percentile(anon_rss_bytes, 95), "
     "stdev(pid), avg(pid) by node",
     ["node", "count_", "dcount_pod", "p99_anon_rss_bytes", "percentile_anon_rss_bytes_95", "stdev_pid", "avg_pid"]),
    ("oom_events | distinct namespace, pod", ["namespace", "pod"]),
    ("oom_events | since 2026-11-24T08:00:00Z | where isnull(pod) or pod == null | take 5",
     ["node", "time", "pid", "comm", "namespace", "pod", "anon_rss_bytes"]),
    ('oom_events | where comm contains "JAV" and pid in (1, 2, 3) and not (pid >= 10) | project comm',
     ["comm"]),
])
def test_queries_plan_to_the_columns_asked_for(text: str, columns: list[str]) -> None:
    answer, _ = merge_and_finish(planner.plan_pipe(text, FULL, now=NOW), [], 10)  # no node answered
    assert answer.column_names == columns


def test_ranges_become_absolute_bounds() -> None:
    p = planner.plan_pipe("oom_events | since 2026-11-24T08:00:00+01:00", FULL, now=NOW)
    assert (p.start, p.end) == (dt.datetime(2026, 11, 24, 7), NOW)
    p = planner.plan_pipe("oom_events | between 2026-11-01 and 2026-11-02T12:00:00Z", FULL, now=NOW)
    assert (p.start, p.end) == (dt.datetime(2026, 11, 1), dt.datetime(2026, 11, 2, 12))
    assert "$start" in p.fragments["oom_events"].sql("n")


@pytest.mark.parametrize("text,column,message,hint", [
    ("oom_events | where comn == 1", 20, "unknown column 'comn'", "did you mean comm?"),
    ("oom_events | summarize count() by nod", 35, "unknown column 'nod'", "did you mean node?"),
    ("oom_events | project pid | where comm == 'x'", 34, "unknown column 'comm'", "columns: pid"),
    ("oom_events | where count() > 1", 20, "count() is an aggregation", ""),
    ("oom_events | summarize kills = count() | where kill > 1", 48, "unknown column 'kill'", "did you mean kills?"),
    ("oom_events | extend x = sume(pid)", 25, "unknown function sume()", "did you mean sum?"),
    ("oom_events | summarize pid", 24, "expected an aggregation", ""),
    ("oom_events | summarize sum(pid) + pid", 35, "must be inside an aggregation", ""),
    ('oom_events | where comm =~ "("', 28, "bad regular expression", ""),
    ("oom_events | summarize percentile(pid, 101)", 40, "from 0 to 100", ""),
    ("oom_events | take 1 | last 1h", 23, "must come before", ""),
    ("oom_events | summarize sum(comm)", 14, "sum(VARCHAR)", ""),
    ("oom_events | where pid > 1x", 26, "'1x' is not a number", ""),
    ('oom_events | where comm == "abc', 28, "unterminated string", ""),
    ("oom_events | sort pid", 19, "expected 'by' after 'sort'", ""),
    ("oom_events | summarize count() by pid, pid", 40, "used twice", ""),
    ("oom_events | between 2026-11-02 and 2026-11-01", 37, "after its start", ""),
    ("oom_events | where (pid > 1", 28, "expected ')'", ""),
])
def test_errors_say_what_where_and_what_was_meant(text: str, column: int, message: str, hint: str) -> None:
    with pytest.raises(QueryError) as e:
        planner.plan_pipe(text, FULL, now=NOW)
    assert message in e.value.message
    assert (e.value.line, e.value.column) == (1, column), e.value.message
    assert e.value.hint.startswith(hint)


def test_node_filters_skip_nodes() -> None:
    p = planner.plan_pipe('oom_events | where node == "a" and pid > 1', FULL, now=NOW)
    assert p.skip_reason("b") and not p.skip_reason("a")
    p = planner.plan_pipe('oom_events | where node in ("a", "b") | where node != "b"', FULL, now=NOW)
    assert [n for n in "abc" if not p.skip_reason(n)] == ["a"]
    p = planner.plan_pipe('oom_events | where node == "a" or pid > 1', FULL, now=NOW)
    assert not p.skip_reason("b")  # a disjunction does not exclude anyone


def test_user_text_never_reaches_sql_unquoted() -> None:
    hostile = "x'; DROP TABLE oom_events; --"
    p = planner.plan_pipe(f'oom_events | where comm == "{hostile}" | summarize count() by comm', FULL, now=NOW)
    frag = p.fragments["oom_events"].sql("node'); DROP TABLE x; --")
    assert "'x''; DROP TABLE oom_events; --'" in frag and "'node''); DROP TABLE x; --'" in frag
    sqlgate.check(frag, FULL)
    sqlgate.check(p.final_sql, FULL)


# Fuzzing: any input is a plan or a clean QueryError, never an internal exception.
VOCAB = ["oom_events", "container_memory", "|", "where", "summarize", "by", "project", "project-away", "extend",
         "sort", "top", "take", "distinct", "last", "since", "between", "and", "or", "not", "in", "!in", "contains",
         "(", ")", ",", "=", "==", "!=", "<", ">=", "=~", "+", "-", "*", "/", "%", "pid", "comm", "pod", "node",
         "time", "count()", "sum(pid)", "avg(", "p50(pid)", "percentile(pid, 50)", "dcount(comm)", "bin(time, 5m)",
         "1h", "5m", "30s", "512MiB", "1.5", "10", "0", '"java.*"', "'x'", "null", "true", "desc", "asc",
         "2026-11-24T08:00:00Z", "isnull(pod)", "x", "1x", "*", '"', "#", "\n"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(VOCAB), max_size=14).map(" ".join),
                 st.lists(st.sampled_from(VOCAB), max_size=14).map(lambda ws: "oom_events | " + " ".join(ws))))
def test_fuzz_any_input_plans_or_fails_cleanly(text: str) -> None:
    try:
        plan = planner.plan_pipe(text, FULL, now=NOW)
    except QueryError as e:
        assert e.message
        assert e.line >= 0 and e.column >= 0
        return
    sqlgate.check(plan.fragments[next(iter(plan.fragments))].sql("n"), FULL)
    sqlgate.check(plan.final_sql, FULL)


def test_a_dollar_in_a_value_never_looks_like_a_parameter() -> None:
    p = planner.plan_pipe('oom_events | where comm == "$start" or comm =~ "a$"', FULL, now=NOW)
    sql = p.fragments["oom_events"].sql("$end")
    assert "$start" not in sql and "$end" not in sql
    assert sqltree.to_sql(sqltree.string("x$start'")) == "('x' || '$' || 'start''')"


def test_values_that_look_like_planner_text_stay_values() -> None:
    p = planner.plan_pipe('oom_events | where comm == "{prev}" or comm == "\\"__pxo_s0\\" AS ()"', FULL, now=NOW)
    sql = p.fragments["oom_events"].sql("n")
    assert "'{prev}'" in sql and "'\"__pxo_s0\" AS ()'" in sql
    with pytest.raises(QueryError, match="NUL"):
        planner.plan_pipe('oom_events | where comm == "\x00"', FULL, now=NOW)


def test_a_repeated_query_reuses_its_plan_and_binds_a_new_range() -> None:
    """The registry rebuilds the catalog from the edges' protos for every query: equal
    tables must still find the remembered plan (planning costs more than a small query)."""
    text = "oom_events | last 1h | summarize n = count() by pid"
    compile._plan_cached.cache_clear()
    first = planner.plan_pipe(text, {n: Table.from_proto(t.to_proto()) for n, t in CATALOG.items()}, now=NOW)
    later = NOW + dt.timedelta(minutes=5)
    again = planner.plan_pipe(text, {n: Table.from_proto(t.to_proto()) for n, t in CATALOG.items()}, now=later)
    info = compile._plan_cached.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert again.fragments == first.fragments and again.final_sql == first.final_sql
    assert (first.start, first.end) == (NOW - dt.timedelta(hours=1), NOW)
    assert (again.start, again.end) == (later - dt.timedelta(hours=1), later)
