"""The REST API under /api/v1 (FastAPI). Every route but health needs an API key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from pxo.cloud import keys
from pxo.cloud.collector_client import CollectorClient
from pxo.cloud.db import Database, User
from pxo.cloud.errors import CloudError, CollectorUnavailable, Unauthorized
from pxo.cloud.settings import CloudSettings
from pxo.common.version import pxo_version


class QueryIn(BaseModel):
    query: str = Field(min_length=1, max_length=16_384, examples=["oom_events | last 1h"])
    sql: bool = Field(False, description="the query is SQL (SELECT ...) rather than the pipe form")
    row_limit: int = Field(0, ge=0, description="most rows to return (0: the collector's cap)")


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


def current_user(request: Request) -> User:
    """The user behind the request's API key; 401 for a missing, bad or revoked key."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    user = keys.verify(request.app.state.db, token.strip())
    if user is None:
        raise Unauthorized("invalid or revoked API key")
    return user


Authed = Annotated[User, Depends(current_user)]


def create_app(settings: CloudSettings, *, db: Database | None = None,
               collector: CollectorClient | None = None) -> FastAPI:
    db = db or Database(settings.db_path)
    collector = collector or CollectorClient(settings.collector, timeout=settings.query_timeout)
    app = FastAPI(title="pxo", version=pxo_version(),
                  description="Every OOM kill in the cluster, attributed and queryable.")
    app.state.db = db
    app.state.collector = collector

    @app.exception_handler(CloudError)
    async def _cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"invalid request: {where}: {first.get('msg', 'malformed')}" if where else "invalid request"
        return JSONResponse({"error": {"code": "invalid_request", "message": msg}}, status_code=422)

    @app.get("/api/v1/health")
    def health() -> dict[str, str]:
        """Liveness of the cloud and reachability of its collector (no key needed)."""
        try:
            collector.nodes()
            reach = "ok"
        except CollectorUnavailable:
            reach = "unreachable"
        return {"status": "ok", "version": pxo_version(), "collector": reach}

    @app.get("/api/v1/whoami")
    def whoami(user: Authed) -> dict[str, str]:
        return {"user": user.name, "role": user.role}

    @app.post("/api/v1/query", response_model=QueryOut)
    def query(body: QueryIn, user: Authed) -> dict[str, Any]:
        """Run a query on every node: `oom_events | last 1h`, or SQL with `sql: true`."""
        return collector.query(body.query, sql=body.sql, row_limit=body.row_limit)

    @app.get("/api/v1/nodes")
    def nodes(user: Authed) -> dict[str, Any]:
        """The edges the collector knows, with their state and probe status."""
        return {"nodes": collector.nodes()}

    return app
