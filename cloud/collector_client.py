"""The cloud's side of the collector's gRPC API, answering in plain Python
structures the REST layer serialises."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
from collections.abc import Callable
from typing import Any

import grpc
import pyarrow as pa

from pxo.cloud.errors import BadQuery, CollectorUnavailable
from pxo.common import arrowipc
from pxo.common.timeutil import from_unix_us, iso
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

NODE_STATES = {v: k.lower() for k, v in pxo_pb2.NodeStatus.State.items()}


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN or infinity
    if isinstance(v, dt.datetime):
        return iso(v)
    if isinstance(v, (dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    return v


TOKEN_METADATA = "x-pxo-cluster-token"  # keep in sync with collector/auth.py


class CollectorClient:
    def __init__(self, address: str, *, token: str = "",
                 channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
                 timeout: float = 60.0) -> None:
        self.address = address
        self.token = token
        self._metadata = ((TOKEN_METADATA, token),) if token else ()
        self._channel = channel_factory(address)
        self._stub = pxo_pb2_grpc.CollectorStub(self._channel)
        self.timeout = timeout

    def _unavailable(self, exc: grpc.RpcError) -> CollectorUnavailable:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return CollectorUnavailable(f"the collector at {self.address} refused the cluster token "
                                        f"({exc.details()})")
        detail = exc.code().name.lower()
        if exc.code() == grpc.StatusCode.UNAVAILABLE and "handshake" in (exc.details() or "").lower():
            detail += ": the TLS handshake failed (its certificate is not of our cluster CA, or it speaks no TLS)"
        return CollectorUnavailable(f"the collector at {self.address} did not answer ({detail})")

    def query(self, text: str, *, sql: bool = False, row_limit: int = 0) -> dict[str, Any]:
        table, meta = self.query_arrow(text, sql=sql, row_limit=row_limit)
        names = table.column_names
        rows = [[_json_value(r[n]) for n in names] for r in table.to_pylist()]
        return {"columns": [{"name": f.name, "type": str(f.type)} for f in table.schema], "rows": rows, **meta}

    def query_arrow(self, text: str, *, sql: bool = False, row_limit: int = 0) -> tuple[pa.Table, dict[str, Any]]:
        """The answer as one Arrow table, and its summary (nodes, partial, truncated, range)."""
        request = pxo_pb2.QueryRequest(
            text=text, syntax=pxo_pb2.SYNTAX_SQL if sql else pxo_pb2.SYNTAX_PIPE, row_limit=row_limit)
        schema: pa.Schema | None = None
        batches: list[pa.RecordBatch] = []
        summary = None
        try:
            for reply in self._stub.Query(request, timeout=self.timeout, metadata=self._metadata):
                part = reply.WhichOneof("part")
                if part == "error":
                    e = reply.error
                    extra = {k: v for k, v in (("line", e.line), ("column", e.column)) if v}
                    if e.hint:
                        extra["hint"] = e.hint
                    raise BadQuery(e.message, **extra)
                if part == "batch":
                    schema, bs = arrowipc.decode(reply.batch.ipc_stream)
                    batches.extend(bs)
                elif part == "summary":
                    summary = reply.summary
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from exc
        if summary is None or schema is None:
            raise CollectorUnavailable("the collector's answer ended early")
        table = pa.Table.from_batches(batches, schema=schema)
        return table, {
            "nodes": [{"node": s.node, "state": NODE_STATES.get(s.state, "unknown"),
                       "detail": s.detail, "rows": s.rows} for s in summary.nodes],
            "partial": summary.partial,
            "truncated": summary.truncated,
            "range": {"start": iso(from_unix_us(summary.start_unix_us)), "end": iso(from_unix_us(summary.end_unix_us))}
            if summary.start_unix_us else None,
        }

    def nodes(self) -> list[dict[str, Any]]:
        try:
            reply = self._stub.ListNodes(pxo_pb2.ListNodesRequest(), timeout=10, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from exc
        return [{
            "node": n.info.node,
            "state": n.state,
            "address": n.info.address,
            "edge_version": n.info.edge_version,
            "kernel_release": n.info.kernel_release,
            "last_heartbeat": iso(from_unix_us(n.last_heartbeat_unix_us)),
            "sources": [{"name": s.name, "state": s.state, "detail": s.detail,
                         "events": s.events, "lost": s.lost} for s in n.info.sources],
        } for n in reply.nodes]

    def tables(self) -> list[dict[str, Any]]:
        try:
            reply = self._stub.ListTables(pxo_pb2.ListTablesRequest(), timeout=10, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from exc
        return [{"name": t.name, "description": t.description,
                 "columns": [{"name": c.name, "type": c.type, "description": c.description} for c in t.columns]}
                for t in reply.tables]

    def close(self) -> None:
        self._channel.close()
