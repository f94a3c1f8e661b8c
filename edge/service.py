"""The edge's gRPC face: Describe (who am I, which tables, source status),
Execute (run one fragment on the store, stream Arrow) and Follow (stream a
table's rows as they are committed, through a row-local fragment)."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from pxo.common.slots import Slots, SlotsFull
from pxo.common.timeutil import from_unix_us, to_unix_us, unix_us
from pxo.common.version import pxo_version
from pxo.edge import explain
from pxo.edge.errors import FragmentError
from pxo.edge.metrics import EdgeMetrics
from pxo.edge.sources.base import Source, SourceStatus
from pxo.edge.store import DEFAULT_FOLLOW_QUEUE_ROWS, FollowerTooSlow, Store
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

log = logging.getLogger(__name__)

class EdgeService(pxo_pb2_grpc.EdgeServicer):
    def __init__(self, *, node: str, store: Store, sources: Sequence[Source],
                 address: Callable[[], str], fragment_timeout: float = 30.0,
                 extra_status: Callable[[], list[SourceStatus]] = list,
                 metrics: EdgeMetrics | None = None, max_followers: int = 4,
                 follow_queue_rows: int = DEFAULT_FOLLOW_QUEUE_ROWS, started: float | None = None) -> None:
        self.metrics = metrics or EdgeMetrics()
        # Each follower holds one of the server's worker threads for as long as it follows:
        # the cap keeps threads free for Execute.
        self.max_followers = max_followers
        self._followers = Slots(max_followers)
        self.follow_queue_rows = follow_queue_rows  # rows a follower may fall behind by
        self.node = node
        self.store = store
        self.sources = sources
        self._extra_status = extra_status
        self._address = address
        self.fragment_timeout = fragment_timeout
        # the edge process's start (unix seconds), in NodeInfo: `pxo nodes` shows the uptime
        self.started = time.time() if started is None else started

    def node_info(self) -> pxo_pb2.NodeInfo:
        return pxo_pb2.NodeInfo(
            node=self.node,
            address=self._address(),
            edge_version=pxo_version(),
            kernel_release=platform.release(),
            tables=[t.to_proto() for t in self.store.tables.values()],
            sources=self.source_status(),
            started_unix_us=unix_us(self.started),
        )

    def source_status(self) -> list[pxo_pb2.SourceStatus]:
        return [st.to_proto() for st in [*(s.status for s in self.sources), *self._extra_status()]]

    def Describe(self, request: pxo_pb2.DescribeRequest, context: grpc.ServicerContext) -> pxo_pb2.NodeInfo:
        return self.node_info()

    def Execute(self, request: pxo_pb2.Fragment, context: grpc.ServicerContext) -> Iterator[pxo_pb2.ArrowBatch]:
        remaining = context.time_remaining()
        timeout = min(self.fragment_timeout, remaining) if remaining is not None else self.fragment_timeout
        started = time.monotonic()
        outcome = "ok"
        try:
            for batch in self.store.execute(
                request.sql,
                start=from_unix_us(request.start_unix_us),
                end=from_unix_us(request.end_unix_us),
                row_limit=request.row_limit,
                timeout=max(timeout, 0.1),
            ):
                yield pxo_pb2.ArrowBatch(ipc_stream=batch.ipc())
        except FragmentError as exc:
            outcome = "refused" if str(exc).startswith("refused") else "failed"
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            self.metrics.fragments.labels(outcome).inc()
            self.metrics.fragment_seconds.observe(time.monotonic() - started)

    def Follow(self, request: pxo_pb2.FollowRequest,
               context: grpc.ServicerContext) -> Iterator[pxo_pb2.ArrowBatch]:
        try:
            slot = self._followers.take()
        except SlotsFull as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this node already serves {exc.cap} followers, its most")
        stop = threading.Event()
        context.add_callback(stop.set)  # the caller cancelled or went away
        try:
            for batch in self.store.follow(
                request.table, request.sql,
                start=from_unix_us(request.start_unix_us) if request.start_unix_us else None,
                end=from_unix_us(request.end_unix_us) if request.end_unix_us else None,
                backlog=request.backlog, row_limit=request.row_limit, stop=stop,
                timeout=self.fragment_timeout, max_queued_rows=self.follow_queue_rows,
            ):
                if not context.is_active():
                    break
                yield pxo_pb2.ArrowBatch(ipc_stream=batch.ipc())
        except FollowerTooSlow as exc:
            log.warning("follower of %s ended: %s", request.table, exc)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except FragmentError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            stop.set()
            slot.release()

    # -- pxo explain (edge/explain.py) ---------------------------------------------------

    def FindKill(self, request: pxo_pb2.ExplainRequest, context: grpc.ServicerContext) -> pxo_pb2.KillMatch:
        try:
            found = explain.find(self.store, request.target)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if found is None:
            return pxo_pb2.KillMatch(found=False)
        return pxo_pb2.KillMatch(found=True, time_unix_us=to_unix_us(found.time), kind=found.kind)

    def Explain(self, request: pxo_pb2.ExplainRequest, context: grpc.ServicerContext) -> pxo_pb2.Explanation:
        window = dt.timedelta(seconds=request.window_s or explain.DEFAULT_WINDOW_S)
        try:
            found = explain.find(self.store, request.target, at=from_unix_us(request.time_unix_us)
                                 if request.time_unix_us else None, kind=request.kind or None)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no kill on node {self.node} matches {request.target!r}")
        return explain.to_proto(explain.explain(self.store, found, window=window), self.node)
