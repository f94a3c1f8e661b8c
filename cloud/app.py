"""The REST API under /api/v1 (FastAPI), and the web page at /.

Every route but health checks the caller's API key and role:

    viewer   query, tables, nodes, clusters (list), whoami
    admin    all of that, and users, keys and clusters (add, remove)

401 means no valid key (missing, malformed, unknown, revoked, or its user
disabled); 403 means a valid key whose role may not do this.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pxo.cloud import keys
from pxo.cloud.collector_client import CollectorClient, QueryStream, _json_value
from pxo.cloud.db import Cluster, Database, User
from pxo.cloud.db import Conflict as DbConflict
from pxo.cloud.errors import (
    CloudError,
    CollectorUnavailable,
    Conflict,
    Forbidden,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
)
from pxo.cloud.limits import BodyLimitMiddleware, RateLimiter, retry_after
from pxo.cloud.metrics import CloudMetrics, MetricsMiddleware
from pxo.cloud.settings import CloudSettings
from pxo.common.version import pxo_version

WEB_DIR = Path(__file__).parent / "web"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
NDJSON = "application/x-ndjson"
MAX_FOLLOWS = 16  # concurrent follow streams per cloud: each holds a worker thread while it waits


class ServiceUnavailable(CloudError):
    status = 503
    code = "unavailable"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
# The web page loads nothing from the network: everything from this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# -- request and answer models ---------------------------------------------------


class QueryIn(BaseModel):
    query: str = Field(min_length=1, max_length=16_384, examples=["oom_events | last 1h"])
    sql: bool = Field(False, strict=True, description="the query is SQL (SELECT ...) rather than the pipe form")
    row_limit: int = Field(0, ge=0, le=10_000_000, strict=True,
                           description="most rows to return (0: the collector's cap)")
    cluster: str = Field("", max_length=63, description="the cluster to ask ('': the default cluster)")


class FollowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # e.g. "sql": there is no SQL form of follow

    query: str = Field(min_length=1, max_length=16_384, examples=['oom_events | where namespace == "prod"'],
                       description="a pipe query of a table, an optional range (its stored rows come first), "
                                   "and where, project, project-away, extend")
    row_limit: int = Field(0, ge=0, le=10_000_000, strict=True,
                           description="most stored rows per node before the live ones (0: the collector's cap)")
    cluster: str = Field("", max_length=63, description="the cluster to ask ('': the default cluster)")


class ColumnOut(BaseModel):
    name: str
    type: str


class NodeStatusOut(BaseModel):
    node: str
    state: str  # ok | failed | timed_out | down | skipped
    detail: str
    rows: int


class QueryOut(BaseModel):
    columns: list[ColumnOut]
    rows: list[list[Any]]
    nodes: list[NodeStatusOut]
    partial: bool
    truncated: bool
    range: dict[str, str | None] | None
    row_count: int
    approximate_columns: list[str] = Field(description="columns computed from a mergeable sketch (percentiles)")
    relative_error: float = Field(description="each approximate value is within this relative error")
    cluster: str


class WhoAmIOut(BaseModel):
    user: str
    role: str
    key: str = Field(description="the visible prefix of the key used")


class UserIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, examples=["alice"])
    role: Literal["admin", "viewer"] = "viewer"


class UserOut(BaseModel):
    name: str
    role: str
    created_at: float
    disabled_at: float | None
    active_keys: int


class KeyIn(BaseModel):
    user: str = Field("", max_length=63, description="whose key ('': the caller's)")
    label: str = Field("", max_length=200, description="what the key is for")


class KeyOut(BaseModel):
    id: str = Field(description="the visible prefix; the key itself is never stored")
    user: str
    role: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class NewKeyOut(KeyOut):
    key: str = Field(description="the key: shown this once, store it now")


class NewUserOut(BaseModel):
    user: UserOut
    key: NewKeyOut


class ClusterIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, examples=["prod-eu"])
    address: str = Field(min_length=3, max_length=255, pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$",
                         examples=["10.0.0.5:50700"])
    token: str = Field("", max_length=512, description="the collector's cluster token (never shown again)")
    default: bool = Field(False, strict=True, description="make it the default cluster")
    # mutual TLS to the collector: all three or none (plain gRPC). `pxo deploy --kubernetes` puts them in
    # the Secret pxo-tls-cloud of the cluster's namespace pxo (ca.crt, tls.crt, tls.key).
    tls_ca: str = Field("", max_length=16_384, description="the cluster CA certificate(s) (PEM)")
    tls_cert: str = Field("", max_length=16_384, description="the certificate the cloud presents (PEM, role "
                          "pxo-cloud, signed by the cluster CA)")
    tls_key: str = Field("", max_length=16_384, description="its private key (PEM, unencrypted; stored by the "
                         "cloud, never shown again)")


class ClusterOut(BaseModel):
    name: str
    address: str
    default: bool
    authenticated: bool = Field(description="a cluster token is sent to this collector")
    tls: bool = Field(False, description="the collector is reached with mutual TLS (certificates set)")


class TableColumnOut(BaseModel):
    name: str
    type: str
    description: str


class TableOut(BaseModel):
    name: str
    description: str
    columns: list[TableColumnOut]


class ErrorOut(BaseModel):
    error: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not JSON"},
    401: {"model": ErrorOut, "description": "no valid API key"},
    403: {"model": ErrorOut, "description": "the key's role may not do this"},
    404: {"model": ErrorOut, "description": "no such cluster, user or key"},
    413: {"model": ErrorOut, "description": "the body is too large"},
    422: {"model": ErrorOut, "description": "the request does not match the schema"},
    429: {"model": ErrorOut, "description": "rate limited (see Retry-After)"},
}


# -- auth ------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    user: User
    key_id: str

    @property
    def role(self) -> str:
        return self.user.role


def current_caller(request: Request) -> Caller:
    """The caller behind the request's API key; 401 for a missing, bad or revoked key, 429 over its rate."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    db: Database = request.app.state.db
    record = keys.verify(db, token.strip())
    if record is None:
        raise Unauthorized("invalid or revoked API key")
    wait = request.app.state.limiter.take(record.id)
    if wait:
        raise TooManyRequests(f"rate limit of key {record.id} exceeded; retry in {retry_after(wait)} s",
                              retry_after=retry_after(wait))
    db.touch_key(record.id)
    return Caller(record.user, record.id)


def viewer(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    return caller  # every role may read


def admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    if caller.role != "admin":
        raise Forbidden(f"this needs the admin role; key {caller.key_id} of user {caller.user.name!r} "
                        f"has the {caller.role} role")
    return caller


Viewer = Annotated[Caller, Depends(viewer)]
Admin = Annotated[Caller, Depends(admin)]
ClusterParam = Annotated[str, Query(max_length=63, description="the cluster to ask (default: the default cluster)")]


# -- answer formats --------------------------------------------------------------


def pick_format(accept: str) -> str:
    """json, ndjson, csv or arrow, by the Accept header (first supported type listed wins)."""
    if not accept.strip():
        return "json"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("application/json", "*/*", "application/*"):
            return "json"
        if media in (NDJSON, "application/jsonl"):
            return "ndjson"
        if media in ("text/csv", "text/*"):
            return "csv"
        if media == ARROW_STREAM:
            return "arrow"
    raise NotAcceptable(f"cannot answer in {accept!r}: ask for application/json, {NDJSON}, text/csv "
                        f"or {ARROW_STREAM}")


def _rows(batch: Any) -> Iterator[tuple[Any, ...]]:
    """A record batch's rows as tuples (by position: two columns may share a name)."""
    return zip(*(col.to_pylist() for col in batch.columns), strict=True)


def _columns(schema: Any) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def _broken(exc: CloudError) -> dict[str, Any]:
    """An error that arrived after the answer had started: it ends the body instead of a summary."""
    return exc.body()["error"]


def json_chunks(stream: QueryStream, cluster: str) -> Iterator[bytes]:
    """The JSON answer, written batch by batch as the collector sends it; the summary
    (nodes, partial, truncated, range, approximate columns) comes last, after the rows,
    or an "error" member instead when the collector's stream broke."""
    yield ('{"columns": ' + json.dumps(_columns(stream.schema)) + ', "rows": [').encode()
    sep = ""
    try:
        for batch in stream.batches():
            parts = [json.dumps([_json_value(v) for v in row]) for row in _rows(batch)]
            if parts:
                yield (sep + ", ".join(parts)).encode()
                sep = ", "
    except CloudError as exc:
        yield ("], " + json.dumps({"error": _broken(exc), "cluster": cluster})[1:]).encode()
        return
    yield ("], " + json.dumps({**(stream.meta or {}), "cluster": cluster})[1:]).encode()


def ndjson_lines(stream: QueryStream, cluster: str, *, follow: bool) -> Iterator[bytes]:
    """NDJSON: {"columns", "cluster"} first; {"row": [...]} per row; {"nodes": [...]} when
    nodes change (a follow stream); {"summary": {...}} last (a query); {"error": {...}} if
    the collector's stream breaks."""
    yield (json.dumps({"columns": _columns(stream.schema), "cluster": cluster}) + "\n").encode()
    try:
        for ev in stream.events():
            if isinstance(ev, list):
                if follow:
                    yield (json.dumps({"nodes": ev}) + "\n").encode()
                continue
            rows = [json.dumps({"row": [_json_value(v) for v in row]}) for row in _rows(ev)]
            yield ("\n".join(rows) + "\n").encode()
    except CloudError as exc:
        yield (json.dumps({"error": _broken(exc)}) + "\n").encode()
        return
    if not follow:
        if stream.meta is None:
            yield (json.dumps({"error": _broken(CollectorUnavailable(
                "the collector's answer ended without its summary"))}) + "\n").encode()
        else:
            yield (json.dumps({"summary": {**stream.meta, "cluster": cluster}}) + "\n").encode()


def csv_chunks(table: Any, chunk_rows: int = 2000) -> Iterator[bytes]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    for batch in table.to_batches(max_chunksize=chunk_rows):
        for row in _rows(batch):
            w.writerow(["" if v is None else _json_value(v) for v in row])
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


def arrow_chunks(stream: QueryStream, cluster: str) -> Iterator[bytes]:
    """An Arrow IPC stream written batch by batch as the collector sends it; the summary
    is the custom metadata (key ``pxo.summary``, JSON) of a last batch with no rows, or
    ``pxo.error`` there when the collector's stream broke."""
    import pyarrow as pa

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, stream.schema) as writer:
        yield _drain(sink)
        try:
            for batch in stream.batches():
                writer.write_batch(batch)
                yield _drain(sink)
            trailer = {"pxo.summary": json.dumps({**(stream.meta or {}), "cluster": cluster})}
        except CloudError as exc:
            trailer = {"pxo.error": json.dumps(_broken(exc))}
        writer.write_batch(pa.RecordBatch.from_pylist([], schema=stream.schema), custom_metadata=trailer)
    yield _drain(sink)


def _drain(sink: io.BytesIO) -> bytes:
    data = sink.getvalue()
    sink.seek(0)
    sink.truncate()
    return data


async def _stream_out(chunks: Iterator[bytes], stream: QueryStream, limiter: Any = None) -> AsyncIterator[bytes]:
    """Each chunk as soon as the collector's stream yields it (read in a worker thread);
    when the client goes away the response task is cancelled here and the gRPC call with it."""
    import anyio.to_thread

    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None, abandon_on_cancel=True, limiter=limiter)
            if chunk is None:
                break
            yield chunk
    finally:
        stream.cancel()


def summary_headers(meta: dict[str, Any], cluster: str, rows: int) -> dict[str, str]:
    bad = [n for n in meta["nodes"] if n["state"] not in ("ok", "skipped")]
    return {
        "X-Pxo-Cluster": cluster,
        "X-Pxo-Rows": str(rows),
        "X-Pxo-Partial": "true" if meta["partial"] else "false",
        "X-Pxo-Truncated": "true" if meta["truncated"] else "false",
        "X-Pxo-Nodes": ", ".join(f"{n['node']}={n['state']}" for n in meta["nodes"])[:4000],
        **({"X-Pxo-Missing-Nodes": ", ".join(n["node"] for n in bad)[:4000]} if bad else {}),
        **({"X-Pxo-Approximate-Columns": ", ".join(meta["approximate_columns"])[:4000],
            "X-Pxo-Relative-Error": f"{meta['relative_error']:g}"} if meta.get("approximate_columns") else {}),
    }


# -- the app ---------------------------------------------------------------------


class Collectors:
    """One gRPC client per cluster, made on first use and remade when the cluster changes."""

    def __init__(self, db: Database, timeout: float, preset: CollectorClient | None = None) -> None:
        self.db = db
        self.timeout = timeout
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[Cluster, CollectorClient]] = {}
        self._preset = preset

    def get(self, name: str | None) -> tuple[Cluster, CollectorClient]:
        cluster = self.db.cluster(name)
        if cluster is None:
            if name:
                raise NotFound(f"no cluster named {name!r}; see GET /api/v1/clusters")
            raise NotFound("no default cluster is configured")
        with self._lock:
            known = self._clients.get(cluster.name)
            if known and known[0] == cluster:
                return cluster, known[1]
            if known and known[1] is not self._preset:
                known[1].close()
            if cluster.tls:  # mutual TLS with the CA and client certificate of the cluster's record
                from pxo.common.tls import TlsError, material_channel_factory, material_from_pem

                try:
                    m = material_from_pem(cluster.tls_ca, cluster.tls_cert, cluster.tls_key)
                except TlsError as exc:
                    raise CollectorUnavailable(f"cluster {cluster.name!r}: TLS: {exc}") from None
                assert m is not None
                client = CollectorClient(cluster.address, token=cluster.token, timeout=self.timeout,
                                         channel_factory=material_channel_factory(m, peer="collector"))
            elif self._preset is not None and self._preset.address == cluster.address:
                client = self._preset
            else:
                client = CollectorClient(cluster.address, token=cluster.token, timeout=self.timeout)
            self._clients[cluster.name] = (cluster, client)
            return cluster, client

    def close(self) -> None:
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()


def create_app(settings: CloudSettings, *, db: Database | None = None,
               collector: CollectorClient | None = None) -> FastAPI:
    db = db or Database(settings.db_path)
    # The deploy-time collector is a cluster like any other, and the default when there is none.
    db.put_cluster(settings.cluster_name, settings.collector, settings.cluster_token)
    collectors = Collectors(db, settings.query_timeout, collector)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        collectors.close()

    app = FastAPI(title="pxo", version=pxo_version(), lifespan=lifespan,
                  description="Every OOM kill in the cluster, attributed and queryable. "
                              "Send `Authorization: Bearer <API key>` on every route but health.")
    app.state.db = db
    app.state.collectors = collectors
    app.state.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    app.state.follow_limiter = None
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,  # type: ignore[arg-type]
                       read_timeout=settings.read_timeout)
    metrics = app.state.metrics = CloudMetrics()  # outermost: counts what the body limit refuses too
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # type: ignore[arg-type]

    @app.exception_handler(CloudError)
    async def _cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"invalid request: {where}: {first.get('msg', 'malformed')}" if where else "invalid request"
        return JSONResponse({"error": {"code": "invalid_request", "message": msg}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code,
                                                                                           "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method of every route on this path, not just the first route's
            methods: set[str] = set()
            for route in app.router.routes:
                if route.matches(request.scope)[0] != Match.NONE:
                    methods |= set(getattr(route, "methods", None) or ())
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=headers)

    # -- health and identity

    @app.get("/api/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness of the cloud and reachability of its default cluster's collector (no key needed)."""
        try:
            collectors.get(None)[1].nodes()
            reach = "ok"
        except (CollectorUnavailable, NotFound):
            reach = "unreachable"
        return {"status": "ok", "version": pxo_version(), "collector": reach}

    @app.get("/api/v1/whoami", response_model=WhoAmIOut, responses=ERRORS, tags=["meta"])
    def whoami(caller: Viewer) -> dict[str, str]:
        """The user and role behind the key sent."""
        return {"user": caller.user.name, "role": caller.role, "key": caller.key_id}

    # -- data

    follows = {"active": 0}  # follow streams running (counted by the streams themselves)

    @app.post("/api/v1/query", response_model=QueryOut, tags=["data"], responses={
        **ERRORS, 400: {"model": ErrorOut, "description": "the query is refused (line, column, hint), "
                                                         "or the body is not JSON"},
        406: {"model": ErrorOut}, 413: {"model": ErrorOut}, 502: {"model": ErrorOut},
        503: {"model": ErrorOut, "description": "too many follow streams on this cloud"},
        200: {"content": {NDJSON: {}, "text/csv": {}, ARROW_STREAM: {}},
              "description": "JSON by default, streamed as the collector answers: the rows, then the summary "
                             "(nodes, partial, truncated, range, approximate_columns, relative_error). "
                             f"By Accept: {NDJSON} (one object a line: columns, a row each, the summary last); "
                             "CSV (read whole before it is sent, so that the summary can go in X-Pxo-* "
                             "headers); an Arrow IPC stream (the summary is the custom metadata 'pxo.summary' "
                             "of its last, empty, batch)"}})
    def query(body: QueryIn, caller: Viewer, request: Request) -> Response:
        """Run a query on every node of a cluster: `oom_events | last 1h`, or SQL with `sql: true`."""
        if len(body.query) > settings.max_query_length:
            raise PayloadTooLarge(f"the query is over {settings.max_query_length} characters")
        fmt = pick_format(request.headers.get("accept", ""))
        cluster, client = collectors.get(body.cluster or None)
        headers = {"X-Pxo-Cluster": cluster.name}
        if fmt == "csv":  # the summary goes in headers, so the answer is read whole first
            table, meta = client.query_arrow(body.query, sql=body.sql, row_limit=body.row_limit)
            return StreamingResponse(csv_chunks(table), media_type="text/csv; charset=utf-8",
                                     headers=summary_headers(meta, cluster.name, table.num_rows))
        stream = client.query_stream(body.query, sql=body.sql, row_limit=body.row_limit)
        if fmt == "json":
            chunks, media = json_chunks(stream, cluster.name), "application/json"
        elif fmt == "ndjson":
            chunks, media = ndjson_lines(stream, cluster.name, follow=False), NDJSON
        else:
            chunks, media = arrow_chunks(stream, cluster.name), ARROW_STREAM
        return StreamingResponse(_stream_out(chunks, stream), media_type=media, headers=headers)

    @app.post("/api/v1/query/follow", tags=["data"], responses={
        **ERRORS, 400: {"model": ErrorOut, "description": "the query is refused (line, column, hint); e.g. "
                                                         "it has summarize, sort, take, top or distinct"},
        406: {"model": ErrorOut}, 413: {"model": ErrorOut}, 502: {"model": ErrorOut},
        503: {"model": ErrorOut, "description": "too many follow streams on this cloud"},
        200: {"content": {NDJSON: {}},
              "description": "NDJSON that does not end until the client disconnects: {\"columns\", "
                             "\"cluster\"} first; {\"nodes\": [{node, state, detail, rows}]} with every node "
                             "at the start and then whenever a node starts or stops following (state ok, "
                             "failed, down, skipped); {\"row\": [...]} per row as the nodes commit it; "
                             "{\"error\": {...}} if the collector's stream breaks"}})
    def follow(body: FollowIn, caller: Viewer, request: Request) -> Response:
        """Stream a row-local pipe query's rows as the nodes commit them, like `tail -f`
        (`pxo query --follow`); with a range (`last 10m`), its stored rows first."""
        if len(body.query) > settings.max_query_length:
            raise PayloadTooLarge(f"the query is over {settings.max_query_length} characters")
        if pick_format(request.headers.get("accept", "")) not in ("json", "ndjson"):
            raise NotAcceptable(f"a follow stream is answered as {NDJSON} only")
        if follows["active"] >= MAX_FOLLOWS:
            raise ServiceUnavailable(f"this cloud already serves {MAX_FOLLOWS} follow streams, its most; "
                                     "try again later")
        cluster, client = collectors.get(body.cluster or None)
        stream = client.follow(body.query, row_limit=body.row_limit)
        return StreamingResponse(_follow_out(stream, cluster.name), media_type=NDJSON,
                                 headers={"X-Pxo-Cluster": cluster.name})

    async def _follow_out(stream: QueryStream, cluster_name: str) -> AsyncIterator[bytes]:
        import anyio

        follows["active"] += 1
        try:
            limiter = app.state.follow_limiter
            if limiter is None:  # made in the event loop; separate from the sync routes' threads
                limiter = app.state.follow_limiter = anyio.CapacityLimiter(MAX_FOLLOWS)
            async for chunk in _stream_out(ndjson_lines(stream, cluster_name, follow=True), stream, limiter):
                yield chunk
        finally:
            follows["active"] -= 1
            stream.cancel()

    @app.get("/api/v1/tables", response_model=list[TableOut], responses={**ERRORS, 502: {"model": ErrorOut}},
             tags=["data"])
    def tables(caller: Viewer, cluster: ClusterParam = "") -> list[dict[str, Any]]:
        """The tables of a cluster's edges, with every column's type and description."""
        return collectors.get(cluster or None)[1].tables()

    @app.get("/api/v1/nodes", responses={**ERRORS, 502: {"model": ErrorOut}}, tags=["data"])
    def nodes(caller: Viewer, cluster: ClusterParam = "") -> dict[str, Any]:
        """The edges a cluster's collector knows, with their state and probe status."""
        name, client = collectors.get(cluster or None)
        return {"cluster": name.name, "nodes": client.nodes()}

    # -- clusters

    def cluster_out(c: Cluster) -> dict[str, Any]:
        # never the token, the key nor the certificates
        return {"name": c.name, "address": c.address, "default": c.is_default, "authenticated": bool(c.token),
                "tls": c.tls}

    @app.get("/api/v1/clusters", response_model=list[ClusterOut], responses=ERRORS, tags=["clusters"])
    def list_clusters(caller: Viewer) -> list[dict[str, Any]]:
        """The collectors this cloud fronts; a query names one or goes to the default."""
        return [cluster_out(c) for c in db.clusters()]

    @app.post("/api/v1/clusters", status_code=201, response_model=ClusterOut, responses=ERRORS,
              tags=["clusters"])
    def put_cluster(body: ClusterIn, caller: Admin) -> dict[str, Any]:
        """Add a cluster (or change its address, token, TLS files or default flag). Admin only."""
        from pxo.common.tls import TlsError, material_from_pem

        try:
            material_from_pem(body.tls_ca, body.tls_cert, body.tls_key)
        except TlsError as exc:
            raise StarletteHTTPException(400, f"TLS: {exc}") from None
        return cluster_out(db.put_cluster(body.name, body.address, body.token, make_default=body.default,
                                          tls=(body.tls_ca, body.tls_cert, body.tls_key)))

    @app.delete("/api/v1/clusters/{name}", status_code=204, responses={**ERRORS, 404: {"model": ErrorOut},
                                                                        409: {"model": ErrorOut}}, tags=["clusters"])
    def delete_cluster(name: str, caller: Admin) -> Response:
        """Forget a cluster (not the default one). Admin only."""
        try:
            if not db.delete_cluster(name):
                raise NotFound(f"no cluster named {name!r}")
        except DbConflict as exc:
            raise Conflict(str(exc)) from None
        return Response(status_code=204)

    # -- users and keys

    def user_out(name: str) -> dict[str, Any]:
        found = [u for u in db.users() if u.name == name]
        if not found:
            raise NotFound(f"no user named {name!r}")
        u = found[0]
        return {"name": u.name, "role": u.role, "created_at": u.created_at, "disabled_at": u.disabled_at,
                "active_keys": u.active_keys}

    def key_out(key_id: str) -> dict[str, Any]:
        k = next(k for k in db.list_keys() if k.id == key_id)
        return {"id": k.id, "user": k.user, "role": k.role, "label": k.label, "created_at": k.created_at,
                "last_used_at": k.last_used_at, "revoked_at": k.revoked_at}

    @app.get("/api/v1/users", response_model=list[UserOut], responses=ERRORS, tags=["users"])
    def list_users(caller: Admin) -> list[dict[str, Any]]:
        """Every user, disabled ones included. Admin only."""
        return [user_out(u.name) for u in db.users()]

    @app.post("/api/v1/users", status_code=201, response_model=NewUserOut,
              responses={**ERRORS, 409: {"model": ErrorOut}}, tags=["users"])
    def create_user(body: UserIn, caller: Admin) -> dict[str, Any]:
        """Create a user and its first API key (shown this once). Admin only."""
        try:
            user = db.create_user(body.name, body.role)
        except DbConflict as exc:
            raise Conflict(str(exc)) from None
        key = keys.create_key(db, user, "first key")
        return {"user": user_out(user.name), "key": {**key_out(keys.key_id(key)), "key": key}}

    @app.delete("/api/v1/users/{name}", status_code=204,
                responses={**ERRORS, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}}, tags=["users"])
    def delete_user(name: str, caller: Admin) -> Response:
        """Disable a user and revoke all its keys at once (not yourself, not the last admin). Admin only."""
        if name == caller.user.name:
            raise Conflict("you cannot remove yourself: ask another admin")
        try:
            if not db.disable_user(name):
                raise NotFound(f"no active user named {name!r}")
        except DbConflict as exc:
            raise Conflict(str(exc)) from None
        return Response(status_code=204)

    @app.get("/api/v1/keys", response_model=list[KeyOut], responses=ERRORS, tags=["keys"])
    def list_keys(caller: Admin, user: Annotated[str, Query(max_length=63)] = "") -> list[dict[str, Any]]:
        """Every key's visible prefix, owner, label and state (never the key). Admin only."""
        return [key_out(k.id) for k in db.list_keys(user=user or None)]

    @app.post("/api/v1/keys", status_code=201, response_model=NewKeyOut,
              responses={**ERRORS, 404: {"model": ErrorOut}}, tags=["keys"])
    def create_key(body: KeyIn, caller: Admin) -> dict[str, Any]:
        """A new key for a user (default: the caller); the key is in this answer only. Admin only."""
        user = db.user_by_name(body.user) if body.user else caller.user
        if user is None:
            raise NotFound(f"no active user named {body.user!r}")
        key = keys.create_key(db, user, body.label)
        return {**key_out(keys.key_id(key)), "key": key}

    @app.delete("/api/v1/keys/{key_id}", status_code=204, responses={**ERRORS, 404: {"model": ErrorOut}},
                tags=["keys"])
    def revoke_key(key_id: str, caller: Admin) -> Response:
        """Revoke a key by its visible prefix (pxo_xxxxxxxx); it is refused from the next request on."""
        if not keys.KEY_ID_RE.match(key_id) or not db.revoke_key(key_id):
            raise NotFound(f"no active key {key_id!r}")
        return Response(status_code=204)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        """Prometheus metrics (no key: counts and timings only; see cloud/metrics.py)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    # -- the web page

    def page_file(name: str, media: str) -> FileResponse:
        return FileResponse(WEB_DIR / name, media_type=media, headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return page_file("index.html", "text/html; charset=utf-8")

    @app.get("/app.js", include_in_schema=False)
    def app_js() -> FileResponse:
        return page_file("app.js", "text/javascript; charset=utf-8")

    @app.get("/app.css", include_in_schema=False)
    def app_css() -> FileResponse:
        return page_file("app.css", "text/css; charset=utf-8")

    return app
