"""The cloud's web app: the REST API under /api/v1 (FastAPI) and the web page at /, put
together from

    cloud/deps.py          the context the routes share, the caller and its role
    cloud/routes_data.py   query, query/follow, tables, nodes           (viewer)
    cloud/routes_admin.py  clusters, users, keys                        (admin; listing clusters: viewer)
    cloud/routes_meta.py   health, whoami, metrics, the web page
    cloud/models.py        request and answer models
    cloud/formats.py       the answer formats of a query
    cloud/collectors.py    a collector client per cluster

and one error path: whatever goes wrong is answered by ``_answer_error`` as one of the
cloud's errors (cloud/errors.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from pxo.cloud import routes_admin, routes_data, routes_meta
from pxo.cloud.collector_client import CollectorClient
from pxo.cloud.collectors import Collectors
from pxo.cloud.db import Conflict as StoreConflict
from pxo.cloud.db import Database
from pxo.cloud.deps import CloudContext
from pxo.cloud.errors import (
    BadRequest,
    CloudError,
    Conflict,
    HttpError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    error_response,
)
from pxo.cloud.limits import BodyLimitMiddleware, FollowSlots, RateLimiter
from pxo.cloud.metrics import CloudMetrics, MetricsMiddleware
from pxo.cloud.settings import CloudSettings
from pxo.common.version import pxo_version

ROUTERS = (routes_meta.api, routes_data.router, routes_admin.router, routes_meta.page)


def create_app(settings: CloudSettings, *, collector: CollectorClient | None = None) -> FastAPI:
    """The app; ``collector``: a client the caller made for the deploy-time collector (with TLS)."""
    db = Database(settings.db_path)
    # The deploy-time collector is a cluster like any other, and the default when there is none.
    db.put_cluster(settings.cluster_name, settings.collector, settings.cluster_token)
    ctx = CloudContext(settings=settings, db=db,
                       collectors=Collectors(db, timeout=settings.query_timeout, preset=collector),
                       limiter=RateLimiter(settings.rate_limit, settings.rate_burst), follows=FollowSlots(),
                       metrics=CloudMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.collectors.close()

    app = FastAPI(title="pxo", version=pxo_version(), lifespan=lifespan,
                  description="Every OOM kill in the cluster, attributed and queryable. "
                              "Send `Authorization: Bearer <API key>` on every route but health.")
    app.state.ctx = ctx
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout=settings.read_timeout)
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)  # outermost: counts what the body limit refuses too
    for handled in (CloudError, StoreConflict, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(handled, _answer_error)
    for router in ROUTERS:
        app.include_router(router)
    return app


async def _answer_error(request: Request, exc: Exception) -> JSONResponse:
    """The one error handler: every error the app raises, answered as one of the cloud's."""
    return error_response(_as_cloud_error(request, exc))


def _as_cloud_error(request: Request, exc: Exception) -> CloudError:
    if isinstance(exc, CloudError):
        return exc
    if isinstance(exc, StoreConflict):  # a name taken, the last admin, the default cluster
        return Conflict(str(exc))
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return InvalidRequest(f"invalid request: {where}: {first.get('msg', 'malformed')}" if where
                              else "invalid request")
    if isinstance(exc, StarletteHTTPException):
        return _from_http(request, exc)
    # A bug: the client is told so in one sentence; Starlette logs the traceback (it re-raises after this answer).
    return CloudError("the cloud failed to answer this request (the cause is in its log)")


def _from_http(request: Request, exc: StarletteHTTPException) -> CloudError:
    """Starlette's own errors: no route for the path (404), or not for the method (405)."""
    message = str(exc.detail)
    if exc.status_code == 400:
        return BadRequest(message)
    if exc.status_code == 404:
        return NotFound(message)
    if exc.status_code == 405:  # every method of every route on this path, not just the first route's
        routes = [*request.app.router.routes, *(r for router in ROUTERS for r in router.routes)]
        path = request.scope["path"]
        return MethodNotAllowed(message, allow=sorted({m for r in routes if isinstance(r, Route)
                                                        and r.path_regex.match(path) for m in r.methods or ()}))
    return HttpError(exc.status_code, message)
