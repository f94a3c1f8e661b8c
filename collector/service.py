"""The collector's gRPC face: edges register and heartbeat; clients query."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import cast

import grpc

from pxo.collector import follow
from pxo.collector.executor import Executor
from pxo.collector.explain import ExplainError, explain
from pxo.collector.metrics import CollectorMetrics
from pxo.collector.registry import Registry
from pxo.v1 import pxo_pb2, pxo_pb2_grpc


class CollectorService(pxo_pb2_grpc.CollectorServicer):
    def __init__(self, registry: Registry, executor: Executor, *, heartbeat_interval: float,
                 metrics: CollectorMetrics | None = None) -> None:
        self.registry = registry
        self.executor = executor
        self.heartbeat_interval = heartbeat_interval
        self.metrics = metrics
        self._explain_pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="explain")

    def Register(self, request: pxo_pb2.RegisterRequest, context: grpc.ServicerContext) -> pxo_pb2.RegisterReply:
        info = request.node
        if not info.node or not info.address:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a registration needs a node name and an address")
        self.registry.register(info)
        return pxo_pb2.RegisterReply(heartbeat_interval_ms=int(self.heartbeat_interval * 1000))

    def Heartbeat(self, request: pxo_pb2.HeartbeatRequest, context: grpc.ServicerContext) -> pxo_pb2.HeartbeatReply:
        known = self.registry.heartbeat(request.node, request.address, list(request.sources))
        return pxo_pb2.HeartbeatReply(known=known)

    def Query(self, request: pxo_pb2.QueryRequest, context: grpc.ServicerContext) -> Iterator[pxo_pb2.QueryReply]:
        replies = self.executor.run(request)
        yield from (self.metrics.observe(replies) if self.metrics else replies)

    def Follow(self, request: pxo_pb2.QueryRequest, context: grpc.ServicerContext) -> Iterator[pxo_pb2.QueryReply]:
        """`pxo query --follow`: see collector/follow.py."""
        streams = self.metrics.follow_streams if self.metrics else None
        if streams is not None:
            streams.inc()
        try:
            yield from follow.serve(request, context, registry=self.registry, stub=self.executor.stub,
                                    row_cap=self.executor.row_cap, now=self.executor.clock)
        finally:
            if streams is not None:
                streams.dec()

    def ListNodes(self, request: pxo_pb2.ListNodesRequest, context: grpc.ServicerContext) -> pxo_pb2.ListNodesReply:
        return pxo_pb2.ListNodesReply(nodes=[
            pxo_pb2.NodeEntry(info=e.info, state=cast("pxo_pb2.NodeEntry.State", e.state),  # the enum's value
                              last_heartbeat_unix_us=int(e.last_seen_wall * 1_000_000))
            for e in self.registry.snapshot()
        ])

    def ListTables(self, request: pxo_pb2.ListTablesRequest,
                   context: grpc.ServicerContext) -> pxo_pb2.ListTablesReply:
        catalog = self.registry.catalog()
        return pxo_pb2.ListTablesReply(tables=[catalog[name].to_proto() for name in sorted(catalog)])

    def Explain(self, request: pxo_pb2.ExplainRequest, context: grpc.ServicerContext) -> pxo_pb2.Explanation:
        """`pxo explain`: see collector/explain.py."""
        try:
            return explain(request, registry=self.registry, stub=self.executor.stub,
                           timeout=self.executor.edge_timeout, pool=self._explain_pool)
        except ExplainError as exc:
            context.abort(exc.code, str(exc))
