"""Prometheus metrics of the collector (the official client library), as the
edge does it (edge/metrics.py): the edges' states are read from the registry
at scrape time; queries are counted and timed around the executor, from the
outside, by reading the replies it streams (a summary, or an error).

    pxo_collector_edges{state}                  edges live / down now
    pxo_collector_edge_up{node}                 1 live, 0 down, per known edge
    pxo_collector_queries_total{outcome}        ok | partial | error
    pxo_collector_partial_answers_total         answers some node did not contribute to
    pxo_collector_node_answers_total{state}     per node asked: ok, failed, timed_out, down, skipped
    pxo_collector_fanout_seconds                from the request to the first reply: planning and
                                                waiting for every edge (the merge streams after it)
    pxo_collector_query_seconds                 the whole answer, merge and streaming included
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pxo.collector.registry import Registry
from pxo.common.addr import split_hostport
from pxo.common.contract import NodeState, answer_state_name, node_state_name
from pxo.v1 import pxo_pb2

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EdgesCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        entries = self.registry.snapshot()
        edges = GaugeMetricFamily("pxo_collector_edges", "Edges the collector knows, by state", labels=["state"])
        up = GaugeMetricFamily("pxo_collector_edge_up", "1 when the edge heartbeats, 0 when it is down",
                               labels=["node"])
        for state in (NodeState.LIVE, NodeState.DOWN):
            edges.add_metric([node_state_name(state)], sum(1 for e in entries if e.state == state))
        for e in entries:
            up.add_metric([e.node], 1.0 if e.state == NodeState.LIVE else 0.0)
        yield edges
        yield up


class CollectorMetrics:
    """The registry, the query counters, and the HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queries = Counter("pxo_collector_queries", "Queries answered, by outcome (ok, partial, error)",
                               ["outcome"], registry=self.registry)
        self.partial = Counter("pxo_collector_partial_answers", "Answers some node did not contribute to",
                               registry=self.registry)
        self.node_answers = Counter("pxo_collector_node_answers", "Per node asked in a query, its state",
                                    ["state"], registry=self.registry)
        self.fanout_seconds = Histogram("pxo_collector_fanout_seconds", "Time from a query to its first reply: "
                                        "planning and the fan-out to every edge", registry=self.registry,
                                        buckets=BUCKETS)
        self.query_seconds = Histogram("pxo_collector_query_seconds", "Time to stream a whole answer",
                                       registry=self.registry, buckets=BUCKETS)
        self.follow_streams = Gauge("pxo_collector_follow_streams", "pxo query --follow streams open now",
                                    registry=self.registry)
        for outcome in ("ok", "partial", "error"):
            self.queries.labels(outcome)  # present at 0 before the first query

    def watch(self, registry: Registry) -> None:
        self.registry.register(EdgesCollector(registry))

    def observe(self, replies: Iterator[pxo_pb2.QueryReply]) -> Iterator[pxo_pb2.QueryReply]:
        """Pass the executor's replies through, counting and timing them."""
        started = time.monotonic()
        first = True
        outcome = "error"  # a stream that ends without a summary (cancelled, crashed) is an error
        try:
            for reply in replies:
                if first:
                    self.fanout_seconds.observe(time.monotonic() - started)
                    first = False
                part = reply.WhichOneof("part")
                if part == "summary":
                    outcome = "partial" if reply.summary.partial else "ok"
                    for n in reply.summary.nodes:
                        self.node_answers.labels(answer_state_name(n.state)).inc()
                elif part == "error":
                    outcome = "error"
                yield reply
        finally:
            self.queries.labels(outcome).inc()
            if outcome == "partial":
                self.partial.inc()
            self.query_seconds.observe(time.monotonic() - started)

    def serve(self, listen: str) -> str:
        """Serve /metrics on host:port (port 0: any free one); returns the bound address."""
        host, port = split_hostport(listen, what="metrics address")
        server, _thread = start_http_server(port, host, registry=self.registry)
        return f"{host}:{server.server_address[1]}"
