"""The collector's Prometheus endpoint, scraped for real after real queries
over real edges: edges live and down, queries by outcome, partial answers,
per-node states and the fan-out latency histogram."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from pxo.common.addr import read_addr_file
from pxo.common.contract import NodeState
from pxo.v1 import pxo_pb2, pxo_pb2_grpc
from tests.helpers.seeding import query, seed_store, wait_nodes
from tests.helpers.services import Service, start_collector, start_edge


def scrape(addr: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_after_queries(tmp_path: Path, services: list[Service]) -> None:
    _, addr = start_collector(services, tmp_path / "collector", "--heartbeat-interval", "0.5",
                              "--expire-after", "2", "--metrics", "127.0.0.1:0")
    metrics = read_addr_file(tmp_path / "collector" / "metrics.addr")
    assert metrics
    m = scrape(metrics)
    assert m[("pxo_collector_edges", (("state", "live"),))] == 0
    assert m[("pxo_collector_queries_total", (("outcome", "ok"),))] == 0

    edges = {}
    for node, pids in (("node-a", [1, 2]), ("node-b", [3])):
        seed_store(tmp_path / node, pids)
        edges[node], _ = start_edge(services, tmp_path / node, addr, node, "--sources", "[]")
    wait_nodes(addr, 2)
    assert query(addr, "oom_events | last 1h")["table"].num_rows == 3
    assert "error" in query(addr, "oom_events | last 1x")
    m = scrape(metrics)
    assert m[("pxo_collector_edges", (("state", "live"),))] == 2
    assert m[("pxo_collector_edge_up", (("node", "node-a"),))] == 1
    assert m[("pxo_collector_queries_total", (("outcome", "ok"),))] == 1
    assert m[("pxo_collector_queries_total", (("outcome", "error"),))] == 1
    assert m[("pxo_collector_node_answers_total", (("state", "ok"),))] == 2
    assert m[("pxo_collector_fanout_seconds_count", ())] == 2
    assert m[("pxo_collector_query_seconds_count", ())] == 2

    # a follow stream is counted while it is open
    with grpc.insecure_channel(addr) as ch:
        stream = pxo_pb2_grpc.CollectorStub(ch).Follow(pxo_pb2.QueryRequest(text="oom_events"), timeout=30)
        next(stream)  # the columns: the stream is open
        assert scrape(metrics)[("pxo_collector_follow_streams", ())] == 1
        stream.cancel()
    deadline = time.monotonic() + 10
    while scrape(metrics)[("pxo_collector_follow_streams", ())] != 0:
        assert time.monotonic() < deadline, "the follow stream is still counted after its cancel"
        time.sleep(0.05)

    edges["node-b"].stop()
    assert query(addr, "oom_events | last 1h")["summary"].partial
    wait_nodes(addr, 1, state=NodeState.DOWN)
    m = scrape(metrics)
    assert m[("pxo_collector_queries_total", (("outcome", "partial"),))] == 1
    assert m[("pxo_collector_partial_answers_total", ())] == 1
    assert m[("pxo_collector_node_answers_total", (("state", "failed"),))] == 1
    assert m[("pxo_collector_edges", (("state", "down"),))] == 1
    assert m[("pxo_collector_edge_up", (("node", "node-b"),))] == 0


def test_metrics_off_by_default(tmp_path: Path, services: list[Service]) -> None:
    start_collector(services, tmp_path)
    assert not (tmp_path / "metrics.addr").exists()
