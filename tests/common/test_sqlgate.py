"""The SQL gate: hostile SQL is refused on DuckDB's own parse tree."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from pxo.common import sqlgate
from pxo.common.sqlgate import SqlRefused, check

TABLES = ["oom_events", "kill_events"]

HOSTILE = [
    "DROP TABLE oom_events",
    "DELETE FROM oom_events",
    "INSERT INTO oom_events VALUES (1)",
    "UPDATE oom_events SET pid = 1",
    "CREATE TABLE x AS SELECT 1",
    "CREATE TEMP TABLE x (a INT)",
    "ATTACH '/etc/passwd' AS p",
    "COPY oom_events TO '/tmp/out.csv'",
    "PRAGMA database_list",
    "SET enable_external_access = true",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_csv('/etc/shadow')",
    "SELECT * FROM read_text('/etc/shadow')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('/*')",
    "SELECT getenv('HOME')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM oom_events; DROP TABLE oom_events",
    "SELECT 1; SELECT 2",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
    "SELECT * FROM other.main.oom_events",
    "SELECT current_setting('threads')",
    "SELECT * FROM oom_events WHERE comm IN (SELECT content FROM read_text('/etc/hosts'))",
    "CALL pragma_version()",
    "EXPORT DATABASE '/tmp/x'",
    "SELECT * FROM pg_catalog.pg_tables",
    "SELECT txid_current()",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_sql_is_refused(sql: str) -> None:
    with pytest.raises(SqlRefused):
        check(sql, TABLES)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM oom_events",
    "SELECT comm, count(*) AS n FROM oom_events WHERE time >= $start GROUP BY comm ORDER BY n DESC LIMIT 5",
    "WITH k AS (SELECT * FROM kill_events) SELECT count(*) FROM k",
    "SELECT o.pid FROM oom_events o JOIN kill_events k ON o.pid = k.pid",
    "SELECT date_trunc('hour', time) AS h, max(anon_rss_bytes) FROM oom_events GROUP BY 1",
    "SELECT * FROM oom_events WHERE comm LIKE 'java%' OR regexp_matches(comm, 'py.*')",
    "SELECT pid, row_number() OVER (PARTITION BY comm ORDER BY time) FROM oom_events",
])
def test_ordinary_queries_pass(sql: str) -> None:
    check(sql, TABLES)


def test_refusals_say_what_and_where() -> None:
    with pytest.raises(SqlRefused) as e:
        check("SELECT * FROM oom_event", TABLES)
    assert e.value.message == "unknown table 'oom_event'" and e.value.position == 14
    assert e.value.table == "oom_event"  # code that needs the name reads it here, not in the message
    assert "oom_events" in e.value.hint
    with pytest.raises(SqlRefused) as e:
        check("SELECT pid FRM oom_events", TABLES)
    assert "syntax error" in e.value.message and e.value.position is not None
    with pytest.raises(SqlRefused, match="getenv"):
        check("SELECT getenv('X') FROM oom_events", TABLES)
    with pytest.raises(SqlRefused, match="limit"):
        check("SELECT " + "1+" * 10_000 + "1", TABLES)


def test_what_the_planner_generates_passes() -> None:
    # The constructs the pipe language compiles to: a node literal, epoch-aligned buckets,
    # windows with QUALIFY, exact holistic finishing, NULL-safe joins.
    check("WITH s AS (SELECT 'n1' AS node, * FROM oom_events WHERE time >= $start AND time < $end) "
          "SELECT time_bucket(to_microseconds(300000000), time, TIMESTAMP '1970-01-01 00:00:00') AS k, "
          "count(*) AS w FROM s WHERE regexp_matches(comm, 'java.*') AND contains(lower(comm), lower('J')) "
          "GROUP BY 1", TABLES)
    check("WITH m AS (SELECT pid, CAST(coalesce(sum(pid), 0) AS BIGINT) AS c FROM oom_events GROUP BY pid), "
          "h AS (SELECT pid, sum(pid) OVER (PARTITION BY pid ORDER BY pid ROWS BETWEEN UNBOUNDED PRECEDING "
          "AND CURRENT ROW) AS cum FROM oom_events) "
          "SELECT m.pid, h.cum, row_number() OVER (ORDER BY m.c DESC NULLS LAST) AS o FROM m "
          "LEFT JOIN h ON m.pid IS NOT DISTINCT FROM h.pid QUALIFY o <= 3", TABLES)


def test_threads_share_one_parser_database_and_get_the_same_verdicts() -> None:
    """Each thread parses on its own cursor of one database: concurrent checks of good
    and hostile SQL give the verdicts a single thread gives."""
    texts = [f"SELECT pid + {i} FROM oom_events" for i in range(40)] + \
            [f"SELECT * FROM read_csv('/etc/passwd{i}')" for i in range(40)]

    def verdict(sql: str) -> str:
        try:
            return ",".join(sorted(sqlgate._check(sql, frozenset({"oom_events"}))))
        except sqlgate.SqlRefused as exc:
            return f"refused: {exc}"

    want = [verdict(t) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            assert list(pool.map(verdict, texts)) == want
    assert want[0] == "oom_events" and want[-1].startswith("refused: table function read_csv()")
    cursors = []
    for _ in range(3):
        t = threading.Thread(target=lambda: cursors.append(sqlgate.PARSER.cursor()))
        t.start()
        t.join()
    assert len({id(c) for c in cursors}) == 3  # a cursor per thread
