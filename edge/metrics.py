"""Prometheus metrics of the edge (the official client library).

Read at scrape time from the state the edge already keeps, so there is one
truth: the sources' status (events seen and lost, state), the store (size,
rows written and dropped), the OOM source's kills by constraint; and the query
fragments the edge answered, counted and timed where they run (edge/service.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pxo.common.addr import split_hostport
from pxo.edge.sources.base import Source, SourceStatus
from pxo.edge.store import Store

STATES = ("running", "degraded", "failed", "stopped")


class EdgeCollector(Collector):
    def __init__(self, *, node: str, sources: Sequence[Source], store: Store,
                 extra_status: Callable[[], list[SourceStatus]],
                 attribute: Callable[[str], Mapping[str, Any]] | None = None, started: float | None = None) -> None:
        self.node = node
        # the edge process's start (unix seconds): a restart moves it (alert PxoEdgeRestarting)
        self.started = time.time() if started is None else started
        self.attribute = attribute  # cgroup path -> namespace, pod, container (edge/attribution.py)
        self.sources = sources
        self.store = store
        self.extra_status = extra_status

    def collect(self) -> Iterator[Any]:
        statuses = [s.status for s in self.sources] + self.extra_status()
        events = CounterMetricFamily("pxo_edge_source_events", "Events (rows) a source produced",
                                     labels=["node", "source"])
        lost = CounterMetricFamily("pxo_edge_source_lost", "Events a source had to drop", labels=["node", "source"])
        state = GaugeMetricFamily("pxo_edge_source_state", "1 for the state a source is in",
                                  labels=["node", "source", "state"])
        for st in statuses:
            events.add_metric([self.node, st.name], st.events)
            lost.add_metric([self.node, st.name], st.lost)
            for s in STATES:
                state.add_metric([self.node, st.name, s], 1.0 if st.state == s else 0.0)
        restarts = CounterMetricFamily("pxo_edge_source_restarts", "Times a source failed and was opened again "
                                       "(edge/sources/base.py)", labels=["node", "source"])
        for src in self.sources:
            restarts.add_metric([self.node, src.name], src.restarts)
        yield events
        yield lost
        yield state
        yield restarts
        started = GaugeMetricFamily("pxo_edge_start_time_seconds", "When this edge process started (unix "
                                    "seconds): each restart, a crash or a hang its watchdog ended, moves it",
                                    labels=["node"])
        started.add_metric([self.node], self.started)
        yield started
        kills = CounterMetricFamily("pxo_edge_oom_kills", "OOM kills recorded, by constraint",
                                    labels=["node", "constraint"])
        for src in self.sources:
            for constraint, n in getattr(src, "kills_by_constraint", {}).items():
                kills.add_metric([self.node, constraint], n)
        yield kills
        # One series per (namespace, pod, container) that had an OOM kill since the edge started:
        # the cardinality is bounded by the pods that OOM on this node, not by all pods.
        pod_kills = CounterMetricFamily("pxo_edge_pod_oom_kills", "OOM kills recorded, by Kubernetes pod "
                                        "(pods the API server named)",
                                        labels=["node", "namespace", "pod", "container"])
        for src in self.sources:
            for (namespace, pod, container), n in getattr(src, "kills_by_pod", {}).items():
                pod_kills.add_metric([self.node, namespace, pod, container], n)
        yield pod_kills
        yield self._eta()
        size = GaugeMetricFamily("pxo_edge_store_bytes", "Bytes the store holds", labels=["node"])
        size.add_metric([self.node], self.store.used_bytes())
        yield size


    def _eta(self) -> GaugeMetricFamily:
        """oom_risk's latest estimate, one series per memory cgroup that is growing toward its limit
        now (the cardinality is the cgroups at risk, not all of them)."""
        eta = GaugeMetricFamily("pxo_edge_oom_eta_seconds", "Estimated seconds until a memory cgroup reaches its "
                                "limit at its current growth (oom_risk; only cgroups that are growing)",
                                labels=["node", "cgroup_path", "namespace", "pod", "container"])
        for src in self.sources:
            for path, row in list(getattr(src, "latest", {}).items()):
                if row.get("eta_seconds") is None:
                    continue
                who = self.attribute(path) if self.attribute else {}
                eta.add_metric([self.node, path, who.get("namespace") or "", who.get("pod") or "",
                                who.get("container") or ""], row["eta_seconds"])
        return eta


class EdgeMetrics:
    """The registry, the fragment counters, and the HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fragments = Counter("pxo_edge_fragments", "Query fragments answered, by outcome", ["outcome"],
                                 registry=self.registry)
        self.fragment_seconds = Histogram("pxo_edge_fragment_seconds", "Time to answer a query fragment",
                                          registry=self.registry,
                                          buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

    def watch(self, collector: EdgeCollector) -> None:
        self.registry.register(collector)

    def serve(self, listen: str) -> str:
        """Serve /metrics on host:port (port 0: any free one); returns the bound address."""
        host, port = split_hostport(listen, what="metrics address")
        server, _thread = start_http_server(port, host, registry=self.registry)
        return f"{host}:{server.server_address[1]}"
