"""The cloud's side of the collector's gRPC API: answers as Arrow record batches
(``QueryStream``) or plain Python structures the REST layer serialises; gRPC errors
become the cloud's (BadQuery, CollectorUnavailable) here, where they enter."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pyarrow as pa
from google.protobuf import json_format

from pxo.cloud.errors import BadQuery, BadRequest, CollectorUnavailable, NotFound
from pxo.common import arrowipc
from pxo.common.contract import CLUSTER_TOKEN_METADATA as TOKEN_METADATA
from pxo.common.contract import answer_state_name, node_state_name, source_state_name
from pxo.common.timeutil import from_unix_us, iso
from pxo.v1 import pxo_pb2, pxo_pb2_grpc


def json_value(v: Any) -> Any:
    """An Arrow value (as Python) as JSON can hold it: times ISO 8601, bytes base64, NaN null."""
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
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: json_value(x) for k, x in v.items()}
    return v


def rows_of(data: pa.RecordBatch | pa.Table) -> Iterator[tuple[Any, ...]]:
    """Rows as tuples of Python values, by position (two columns may share a name)."""
    return zip(*(col.to_pylist() for col in data.columns), strict=True)


def columns_of(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def _bad_query(e: pxo_pb2.QueryError) -> BadQuery:
    extra: dict[str, Any] = {k: v for k, v in (("line", e.line), ("column", e.column)) if v}
    if e.hint:
        extra["hint"] = e.hint
    if e.expression:
        extra["expression"] = e.expression
    return BadQuery(e.message, **extra)


def node_statuses(summary: pxo_pb2.QuerySummary) -> list[dict[str, Any]]:
    return [{"node": s.node, "state": answer_state_name(s.state), "detail": s.detail, "rows": s.rows}
            for s in summary.nodes]


def summary_meta(summary: pxo_pb2.QuerySummary) -> dict[str, Any]:
    """A query's summary as the REST API shows it."""
    return {
        "nodes": node_statuses(summary),
        "partial": summary.partial,
        "truncated": summary.truncated,
        "range": {"start": iso(from_unix_us(summary.start_unix_us)), "end": iso(from_unix_us(summary.end_unix_us))}
        if summary.start_unix_us else None,
        "row_count": summary.rows,
        "approximate_columns": list(summary.approximate_columns),
        "relative_error": summary.relative_error,
    }


class QueryStream:
    """A collector answer being read: the first reply is read at once (an error raises
    there, before anything is sent on), then ``batches()`` (a query: record batches, and
    ``meta`` once the summary came) or ``events()`` (a follow stream: batches, and node
    status lists as nodes start or stop following) read the rest as it arrives.
    ``cancel()`` ends the gRPC call (the client went away)."""

    def __init__(self, client: CollectorClient, call: Any) -> None:
        self._client = client
        self._call = call
        self._it = iter(call)
        self.meta: dict[str, Any] | None = None
        self._pending: list[pa.RecordBatch] = []
        try:
            first = next(self._it)
        except StopIteration:
            raise CollectorUnavailable("the collector's answer ended early") from None
        except grpc.RpcError as exc:
            raise client._unavailable(exc) from exc
        part = first.WhichOneof("part")
        if part == "error":
            raise _bad_query(first.error)
        if part != "batch":
            call.cancel()
            raise CollectorUnavailable("the collector's answer did not start with its columns")
        self.schema, self._pending = arrowipc.decode(first.batch.ipc_stream)

    def cancel(self) -> None:
        self._call.cancel()

    def events(self) -> Iterator[pa.RecordBatch | list[dict[str, Any]] | dict[str, Any]]:
        """Record batches; a list of node statuses for every summary; for a query, the
        summary's meta dict last. CollectorUnavailable or BadQuery if the stream breaks."""
        yield from (b for b in self._pending if b.num_rows)
        self._pending = []
        try:
            for reply in self._it:
                part = reply.WhichOneof("part")
                if part == "batch":
                    _, bs = arrowipc.decode(reply.batch.ipc_stream)
                    yield from (b for b in bs if b.num_rows)
                elif part == "summary":
                    yield node_statuses(reply.summary)
                    self.meta = summary_meta(reply.summary)
                else:
                    raise _bad_query(reply.error)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._client._unavailable(exc) from exc

    def batches(self) -> Iterator[pa.RecordBatch]:
        """A query's record batches (non-empty) as they arrive; ``meta`` is set at the end."""
        for ev in self.events():
            if isinstance(ev, pa.RecordBatch):
                yield ev
        if self.meta is None:
            raise CollectorUnavailable("the collector's answer ended without its summary")

    def read_all(self) -> pa.Table:
        """A query's whole answer as one table; ``meta`` is set."""
        return pa.Table.from_batches(list(self.batches()), schema=self.schema)


class CollectorClient:
    def __init__(self, address: str, *, token: str = "",
                 channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
                 timeout: float = 60.0) -> None:
        self.address = address
        self.token = token
        self._metadata = ((TOKEN_METADATA, token),) if token else ()
        self.tls = channel_factory is not grpc.insecure_channel  # for the error: plain text to a TLS server
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
        elif (exc.code() == grpc.StatusCode.UNAVAILABLE and not self.tls
              and "socket closed" in (exc.details() or "").lower()):
            detail += (": it closed the plain-text connection, so it probably requires TLS: give the cluster "
                       "its CA and a client certificate and key (pxo clusters add --tls-ca --tls-cert --tls-key)")
        return CollectorUnavailable(f"the collector at {self.address} did not answer ({detail})")

    def query(self, text: str, *, sql: bool = False, row_limit: int = 0) -> dict[str, Any]:
        """The whole answer at once: columns, rows (JSON values) and the summary."""
        stream = self.query_stream(text, sql=sql, row_limit=row_limit)
        table = stream.read_all()
        rows = [[json_value(v) for v in row] for row in rows_of(table)]
        return {"columns": columns_of(table.schema), "rows": rows, **(stream.meta or {})}

    def _request(self, text: str, sql: bool, row_limit: int) -> pxo_pb2.QueryRequest:
        return pxo_pb2.QueryRequest(
            text=text, syntax=pxo_pb2.SYNTAX_SQL if sql else pxo_pb2.SYNTAX_PIPE, row_limit=row_limit)

    def query_stream(self, text: str, *, sql: bool = False, row_limit: int = 0) -> QueryStream:
        """Start a query and read its first reply: BadQuery or CollectorUnavailable now, before
        any answer is sent on; then the batches as they arrive (``QueryStream.batches``)."""
        call = self._stub.Query(self._request(text, sql, row_limit), timeout=self.timeout, metadata=self._metadata)
        return QueryStream(self, call)

    def follow(self, text: str, *, row_limit: int = 0) -> QueryStream:
        """Start following a query (no deadline: it runs until cancelled); first reply read as for query_stream."""
        call = self._stub.Follow(self._request(text, False, row_limit), metadata=self._metadata)
        return QueryStream(self, call)

    def nodes(self) -> list[dict[str, Any]]:
        try:
            reply = self._stub.ListNodes(pxo_pb2.ListNodesRequest(), timeout=10, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._unavailable(exc) from exc
        return [{
            "node": n.info.node,
            "state": node_state_name(n.state),
            "address": n.info.address,
            "edge_version": n.info.edge_version,
            "kernel_release": n.info.kernel_release,
            "last_heartbeat": iso(from_unix_us(n.last_heartbeat_unix_us)),
            # the edge process's start: a restart shows as an uptime shorter than the node's
            "started": iso(from_unix_us(n.info.started_unix_us)) if n.info.started_unix_us else None,
            "sources": [{"name": s.name, "state": source_state_name(s.state), "detail": s.detail,
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

    def explain(self, target: str, *, window_s: int = 0) -> dict[str, Any]:
        """`pxo explain`: the collector's Explanation as JSON (explanation_json)."""
        try:
            reply = self._stub.Explain(pxo_pb2.ExplainRequest(target=target, window_s=window_s),
                                       timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or "no such kill") from exc
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise BadRequest(exc.details() or "bad target") from exc
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and exc.details():
                raise CollectorUnavailable(exc.details() or "") from exc
            raise self._unavailable(exc) from exc
        return explanation_json(reply)

    def close(self) -> None:
        self._channel.close()


def _row(s: Any) -> dict[str, Any]:
    """A Struct row as JSON: its numbers were doubles on the wire; whole ones are integers again."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v
            for k, v in json_format.MessageToDict(s).items()}


def explanation_json(e: pxo_pb2.Explanation) -> dict[str, Any]:
    """An Explanation as the REST API, the CLI and the web page read it (docs/explain.md)."""
    def when(us: int) -> str | None:
        return iso(from_unix_us(us))

    return {
        "node": e.node, "kind": e.kind,
        "kill": _row(e.kill),
        "members": [_row(m) for m in e.members],
        "window": {"start": when(e.window_start_unix_us), "end": when(e.window_end_unix_us)},
        "series": [{"name": s.name, "unit": s.unit,
                    "points": [[when(t), None if math.isnan(v) else v] for t, v in zip(s.time_unix_us, s.values,
                                                                                      strict=True)]}
                   for s in e.series],
        "holders": [_row(h) for h in e.holders],
        "verdicts": [{"rule": v.rule, "sentence": v.sentence, "numbers": dict(v.numbers)} for v in e.verdicts],
        "missing": list(e.missing),
        "unanswered": [{"node": u.node, "state": answer_state_name(u.state), "detail": u.detail}
                       for u in e.unanswered],
    }
