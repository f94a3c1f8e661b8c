"""The data routes (viewer): a query and its answer formats, a follow stream, a cluster's
tables and nodes. Each asks the collector of the cluster it names, or of the default one;
so will any other question about a query (such as how it would be planned)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from pxo.cloud import formats
from pxo.cloud.deps import ClusterParam, Follows, Pool, Settings, Viewer
from pxo.cloud.errors import BadRequest, NotAcceptable, PayloadTooLarge
from pxo.cloud.formats import ARROW_STREAM, NDJSON, NdjsonWriter
from pxo.cloud.models import FollowIn, QueryIn, QueryOut, TableOut, errors
from pxo.cloud.settings import CloudSettings

router = APIRouter(prefix="/api/v1", tags=["data"])


class StreamedAnswer(StreamingResponse):
    """An answer sent chunk by chunk as the collector's stream yields it. The stream blocks, so
    each chunk is read in a worker thread: the shared pool's, or with ``own_thread`` one of its
    own (a follow stream waits for rows as long as its client stays). However the response ends
    (done, failed, the client gone), ``closers`` run: the gRPC call is cancelled with it."""

    def __init__(self, chunks: Iterator[bytes], *, closers: Sequence[Callable[[], None]], media_type: str,
                 headers: dict[str, str], own_thread: bool = False) -> None:
        super().__init__(_pump(chunks, own_thread=own_thread), media_type=media_type, headers=headers)
        self._closers = closers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.ExitStack() as closing:  # every closer runs, even if one fails
            for close in self._closers:
                closing.callback(close)
            await super().__call__(scope, receive, send)


async def _pump(chunks: Iterator[bytes], *, own_thread: bool) -> AsyncIterator[bytes]:
    limiter = anyio.CapacityLimiter(1) if own_thread else None  # made here: it needs the event loop
    while True:
        chunk = await anyio.to_thread.run_sync(next, chunks, None, abandon_on_cancel=True, limiter=limiter)
        if chunk is None:
            return
        yield chunk


def _check_length(text: str, settings: CloudSettings) -> None:
    if len(text) > settings.max_query_length:
        raise PayloadTooLarge(f"the query is over {settings.max_query_length} characters")


@router.post("/query", response_model=QueryOut, responses={
    **errors(406, 413, 502, described={
        400: "the query is refused (line, column, hint), or the body is not JSON",
        503: "too many follow streams on this cloud"}),
    200: {"content": {NDJSON: {}, "text/csv": {}, ARROW_STREAM: {}},
          "description": "JSON by default, streamed as the collector answers: the rows, then the summary "
                         "(nodes, partial, truncated, range, approximate_columns, relative_error). "
                         f"By Accept: {NDJSON} (one object a line: columns, a row each, the summary last); "
                         "CSV (read whole before it is sent, so that the summary can go in X-Pxo-* "
                         "headers); an Arrow IPC stream (the summary is the custom metadata 'pxo.summary' "
                         "of its last, empty, batch)"}})
def query(body: QueryIn, caller: Viewer, request: Request, settings: Settings, pool: Pool) -> Response:
    """Run a query on every node of a cluster: `oom_events | last 1h`, or SQL with `sql: true`."""
    _check_length(body.query, settings)
    writer = formats.choose(request.headers.get("accept", ""))()
    cluster, client = pool.get(body.cluster or None)
    stream = client.query_stream(body.query, sql=body.sql, row_limit=body.row_limit)
    try:
        answer = writer.write(stream, cluster.name)  # CSV reads the whole answer here
    except BaseException:
        stream.cancel()
        raise
    return StreamedAnswer(answer.chunks, closers=[stream.cancel], media_type=writer.media_type,
                          headers=answer.headers)


@router.post("/query/follow", responses={
    **errors(406, 413, 502, described={
        400: "the query is refused (line, column, hint); e.g. it has summarize, sort, take, top or distinct",
        503: "too many follow streams on this cloud"}),
    200: {"content": {NDJSON: {}},
          "description": "NDJSON that does not end until the client disconnects: {\"columns\", "
                         "\"cluster\"} first; {\"nodes\": [{node, state, detail, rows}]} with every node "
                         "at the start and then whenever a node starts or stops following (state ok, "
                         "failed, down, skipped); {\"row\": [...]} per row as the nodes commit it; "
                         "{\"error\": {...}} if the collector's stream breaks"}})
def follow(body: FollowIn, caller: Viewer, request: Request, settings: Settings, pool: Pool,
           follows: Follows) -> Response:
    """Stream a row-local pipe query's rows as the nodes commit them, like `tail -f`
    (`pxo query --follow`); with a range (`last 10m`), its stored rows first."""
    _check_length(body.query, settings)
    if not formats.choose(request.headers.get("accept", "")).follow_ok:
        raise NotAcceptable(f"a follow stream is answered as {NDJSON} only")
    slot = follows.take()
    try:
        cluster, client = pool.get(body.cluster or None)
        stream = client.follow(body.query, row_limit=body.row_limit)
    except BaseException:
        slot.release()
        raise
    answer = NdjsonWriter(follow=True).write(stream, cluster.name)
    return StreamedAnswer(answer.chunks, closers=[stream.cancel, slot.release], media_type=NDJSON,
                          headers=answer.headers, own_thread=True)


@router.get("/tables", response_model=list[TableOut], responses=errors(502))
def tables(caller: Viewer, pool: Pool, cluster: ClusterParam = "") -> list[dict[str, Any]]:
    """The tables of a cluster's edges, with every column's type and description."""
    return pool.get(cluster or None)[1].tables()


@router.get("/explain", responses=errors(400, 404, 502))
def explain(caller: Viewer, pool: Pool, target: str = "", window: int = 600,
            cluster: ClusterParam = "") -> dict[str, Any]:
    """Why a kill happened (docs/explain.md): TARGET is an oom_id, a pid, a cgroup path, a container id
    or namespace/pod[/container]; empty, the most recent kill. ``window``: seconds before the kill."""
    if not 10 <= window <= 24 * 3600:
        raise BadRequest(f"window must be between 10 s and 24 h, not {window} s")
    found, client = pool.get(cluster or None)
    return {"cluster": found.name, **client.explain(target, window_s=window)}


@router.get("/nodes", responses=errors(502))
def nodes(caller: Viewer, pool: Pool, cluster: ClusterParam = "") -> dict[str, Any]:
    """The edges a cluster's collector knows, with their state and probe status."""
    found, client = pool.get(cluster or None)
    return {"cluster": found.name, "nodes": client.nodes()}
