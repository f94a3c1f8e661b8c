"""The collector over real gRPC: real edge processes serving real DuckDB files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pxo.common.contract import NodeState
from pxo.v1 import pxo_pb2
from tests.helpers.seeding import query, seed_store, wait_nodes
from tests.helpers.services import Service, start_collector, start_edge

State = pxo_pb2.NodeStatus.State


@pytest.fixture
def cluster(tmp_path: Path, services: list[Service]) -> tuple[str, dict[str, Service]]:
    _, addr = start_collector(services, tmp_path / "collector", "--heartbeat-interval", "0.5",
                              "--expire-after", "2")
    edges = {}
    for node, pids in (("node-a", [1, 2, 3]), ("node-b", [10, 20])):
        seed_store(tmp_path / node, pids)
        edges[node], _ = start_edge(services, tmp_path / node, addr, node, "--sources", "[]")
    wait_nodes(addr, 2)
    return addr, edges


def test_fan_out_merges_with_a_node_column(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    ans = query(addr, "oom_events | last 1h")
    t = ans["table"]
    assert t.column_names[0] == "node"
    assert sorted(zip(t["node"].to_pylist(), t["pid"].to_pylist(), strict=True)) == [
        ("node-a", 1), ("node-a", 2), ("node-a", 3), ("node-b", 10), ("node-b", 20)]
    s = ans["summary"]
    assert not s.partial and [(n.node, n.state, n.rows) for n in s.nodes] == [
        ("node-a", State.OK, 3), ("node-b", State.OK, 2)]
    assert s.end_unix_us - s.start_unix_us == 3600 * 1_000_000


def test_time_range_excludes_older_rows(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    assert query(addr, "oom_events | last 1m")["table"].num_rows == 0  # rows are 5 minutes old
    assert query(addr, "oom_events | last 1h | take 2")["table"].num_rows == 2


def test_sql_form_runs_over_all_nodes(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    ans = query(addr, "SELECT node, count(*) AS kills FROM oom_events GROUP BY node ORDER BY node",
                syntax=pxo_pb2.SYNTAX_SQL)
    assert ans["table"].to_pylist() == [{"node": "node-a", "kills": 3}, {"node": "node-b", "kills": 2}]
    err = query(addr, "SELECT * FROM read_csv('/etc/passwd')", syntax=pxo_pb2.SYNTAX_SQL)["error"]
    assert "read_csv" in err.message


def test_empty_answer_keeps_columns(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    t = query(addr, "oom_events | last 1s")["table"]
    assert t.num_rows == 0 and t.column_names[:3] == ["node", "time", "pid"]


def test_parse_errors_come_back_positioned(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    err = query(addr, "oom_events | last 1x")["error"]
    assert (err.line, err.column) == (1, 19) and "duration" in err.message
    err = query(addr, "oom_evnts | last 1h")["error"]
    assert err.hint.startswith("did you mean oom_events?")


def test_a_dead_edge_is_named_not_dropped(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, edges = cluster
    edges["node-b"].stop()  # graceful stop: it does not deregister
    ans = query(addr, "oom_events | last 1h")
    assert ans["table"]["node"].to_pylist() == ["node-a"] * 3
    s = ans["summary"]
    assert s.partial
    b = next(n for n in s.nodes if n.node == "node-b")
    assert b.state == State.FAILED and "unreachable" in b.detail
    # Once its heartbeats have been missing past --expire-after, it is reported down.
    wait_nodes(addr, 1, state=NodeState.DOWN)
    b = next(n for n in query(addr, "oom_events | last 1h")["summary"].nodes if n.node == "node-b")
    assert b.state == State.DOWN and "no heartbeat" in b.detail


def test_summarize_over_real_edges(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    t = query(addr, "oom_events | last 1h | summarize kills = count(), rss = sum(anon_rss_bytes), "
                    "p50 = p50(pid), sd = stdev(pid), pods = dcount(cgroup_path) by node")["table"]
    assert t.column_names == ["node", "kills", "rss", "p50", "sd", "pods"]
    rows = {r["node"]: r for r in t.to_pylist()}
    assert rows["node-a"]["kills"] == 3 and rows["node-b"]["kills"] == 2
    assert int(rows["node-a"]["rss"]) == 3 << 29
    # p50 comes from a sketch: within 1% of the exact value, and the answer says so
    assert rows["node-a"]["p50"] == pytest.approx(2, rel=0.01)
    assert rows["node-b"]["p50"] == pytest.approx(10, rel=0.01)
    assert rows["node-b"]["sd"] == pytest.approx(7.0710678118654755)
    assert rows["node-a"]["pods"] == 3
    overall = query(addr, "oom_events | summarize n = count(), p = percentile(pid, 75), avg_pid = avg(pid), "
                          "e = percentile_exact(pid, 75)")
    s = overall["summary"]
    assert list(s.approximate_columns) == ["p"] and s.relative_error == pytest.approx(0.01)
    (row,) = overall["table"].to_pylist()
    assert row["p"] == pytest.approx(10, rel=0.01)
    assert {**row, "p": None} == {"n": 5, "p": None, "avg_pid": 7.2, "e": 10}
    assert list(query(addr, "oom_events | summarize n = count()")["summary"].approximate_columns) == []


def test_top_n_is_exact_across_nodes(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    t = query(addr, "oom_events | top 3 by pid | project node, pid")["table"]
    assert t.to_pylist() == [{"node": "node-b", "pid": 20}, {"node": "node-b", "pid": 10},
                             {"node": "node-a", "pid": 3}]
    t = query(addr, "oom_events | sort by pid asc | take 2 | project pid")["table"]
    assert t["pid"].to_pylist() == [1, 2]


def test_where_node_skips_the_other_nodes(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    ans = query(addr, 'oom_events | where node == "node-b" | project node, pid')
    assert sorted(ans["table"]["pid"].to_pylist()) == [10, 20]
    s = ans["summary"]
    a = next(n for n in s.nodes if n.node == "node-a")
    assert a.state == State.SKIPPED and "where" in a.detail and not s.partial


def test_unknown_columns_are_suggested(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    err = query(addr, "oom_events | where comn == 'x'")["error"]
    assert err.message == "unknown column 'comn'" and (err.line, err.column) == (1, 20)
    assert err.hint.startswith("did you mean comm?")


def test_too_many_groups_is_an_error_not_a_wrong_answer(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    err = query(addr, "oom_events | summarize count() by pid", row_limit=2)["error"]
    assert "node-a holds more than 2" in err.message


def test_partial_answers_over_the_byte_cap_fail_the_query_clearly(tmp_path: Path, services: list[Service]) -> None:
    _, addr = start_collector(services, tmp_path / "c", "--byte-cap-mb", "0.001")  # about 1 KiB
    seed_store(tmp_path / "a", list(range(1, 60)))
    start_edge(services, tmp_path / "a", addr, "node-a", "--sources", "[]")
    wait_nodes(addr, 1)
    err = query(addr, "oom_events | last 1h")["error"]
    assert "partial answers exceed the collector's limit of 1.023 KiB (--byte-cap-mb)" in err.message
    # an answer that fits still comes back
    assert query(addr, "oom_events | last 1h | summarize n = count()")["table"].to_pylist() == [{"n": 59}]


def test_integer_arithmetic_is_signed_and_an_overflow_is_one_error(cluster: tuple[str, dict[str, Service]]) -> None:
    addr, _ = cluster
    # file_rss_bytes (0) - anon_rss_bytes (2^29) is negative on every node: not an error there
    ans = query(addr, "oom_events | extend headroom = file_rss_bytes - anon_rss_bytes | "
                      "summarize low = min(headroom), n = count()")
    assert ans["table"].to_pylist() == [{"low": -(1 << 29), "n": 5}] and not ans["summary"].partial
    err = query(addr, "oom_events | extend x = anon_rss_bytes * 1TiB | take 3")["error"]
    assert err.message.startswith("integer overflow in anon_rss_bytes * 1TiB:") and (err.line, err.column) == (1, 40)
