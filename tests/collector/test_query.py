"""The pipe language's parser and the planner's time bounds."""

from __future__ import annotations

import datetime as dt

import pytest

from pxo.collector import planner
from pxo.collector.errors import QueryError
from pxo.collector.query import Last, Take, parse
from pxo.common.schema import TIME, Column, Table

CATALOG = {"oom_events": Table("oom_events", "", (TIME, Column("pid", "INTEGER", ""))),
           "kill_events": Table("kill_events", "", (TIME,))}
NOW = dt.datetime(2026, 11, 24, 12, 0, 0)


@pytest.mark.parametrize("text,seconds", [("oom_events | last 30s", 30), ("oom_events|last 15m", 900),
                                          ("oom_events | last 1h", 3600), ("oom_events | LAST 2d", 172800),
                                          ("oom_events | last 1w", 604800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse(text).range_seconds == seconds


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
    assert plan.fragments == {"oom_events": 'SELECT * FROM "oom_events" WHERE "time" >= $start AND "time" < $end'}
    assert "now()" not in plan.fragments["oom_events"].lower()


def test_unknown_table_suggests_and_lists() -> None:
    with pytest.raises(QueryError) as e:
        planner.plan_pipe("oom_event | last 1h", CATALOG, now=NOW)
    assert e.value.message == "unknown table 'oom_event'" and e.value.column == 1
    assert e.value.hint == "did you mean oom_events? tables: kill_events, oom_events"
    with pytest.raises(QueryError, match="no edge has registered"):
        planner.plan_pipe("oom_events | last 1h", {}, now=NOW)


def test_sql_form_is_gated() -> None:
    with pytest.raises(QueryError, match="only SELECT"):
        planner.plan_sql("DROP TABLE oom_events", CATALOG)
    with pytest.raises(QueryError) as e:
        planner.plan_sql("SELECT * FROM kill_event", CATALOG)
    assert e.value.hint.startswith("did you mean kill_events?")
    plan = planner.plan_sql("SELECT count(*) FROM oom_events", CATALOG)
    assert plan.fragments == {"oom_events": 'SELECT * FROM "oom_events"'}
