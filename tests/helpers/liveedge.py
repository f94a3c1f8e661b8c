"""A real edge (store, gRPC service, registration) inside the test's own process, for tests
that commit rows into an edge's store while something follows them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pxo.common.grpcserver import GrpcServer
from pxo.edge.registration import Registration
from pxo.edge.service import EdgeService
from pxo.edge.sources import all_tables
from pxo.edge.store import Store
from pxo.v1 import pxo_pb2_grpc
from tests.helpers.seeding import oom_row


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class LiveEdge:
    """A real edge (store, gRPC service, registration) in this process, so that the
    test can commit rows into its store while a follower reads them."""

    def __init__(self, data_dir: Path, collector: str, node: str, **service: Any) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.store = Store(data_dir / "edge.duckdb", all_tables(), flush_interval=0.02)
        self.store.start()
        self.service = EdgeService(node=node, store=self.store, sources=[], address=lambda: self.address,
                                   **service)
        self.server = GrpcServer("edge", listen="127.0.0.1:0", tls=None, service_names=["pxo.v1.Edge"],
                                 add_servicers=lambda s: pxo_pb2_grpc.add_EdgeServicer_to_server(self.service, s))
        self.address = self.server.start()
        self.registration = Registration(collector=collector, node_info=self.service.node_info, interval=0.5) \
            if collector else None
        if self.registration is not None:
            self.registration.start()

    def add(self, *pids: int, age: dt.timedelta = dt.timedelta(0)) -> None:
        """Commit one row per pid (time: now - age)."""
        now = utcnow()
        for pid in pids:
            self.store.append("oom_events", oom_row(pid, now - age))
        assert self.store.flush()

    def stop(self) -> None:
        if self.registration is not None:
            self.registration.stop()
        # also ends its threads, which hold DuckDB connections (the SQL gate's): now, not while
        # the interpreter shuts down
        self.server.stop(0)
        self.store.close()
