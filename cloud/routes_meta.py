"""The cloud about itself: health (no key), whoami, Prometheus metrics (no key), and the web
page at / (static files in cloud/web/, no build step, nothing from another origin)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from pxo.cloud.deps import Context, Pool, Viewer
from pxo.cloud.errors import CollectorUnavailable, NotFound
from pxo.cloud.models import ERRORS, WhoAmIOut
from pxo.common.version import pxo_version

WEB_DIR = Path(__file__).parent / "web"
# The web page loads nothing from the network: everything from this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

api = APIRouter(prefix="/api/v1", tags=["meta"])
page = APIRouter(include_in_schema=False)


@api.get("/health")
def health(pool: Pool) -> dict[str, str]:
    """Liveness of the cloud and reachability of its default cluster's collector (no key needed)."""
    try:
        pool.get(None)[1].nodes()
        reach = "ok"
    except (CollectorUnavailable, NotFound):
        reach = "unreachable"
    return {"status": "ok", "version": pxo_version(), "collector": reach}


@api.get("/whoami", response_model=WhoAmIOut, responses=ERRORS)
def whoami(caller: Viewer) -> WhoAmIOut:
    """The user and role behind the key sent."""
    return WhoAmIOut(user=caller.user.name, role=caller.role, key=caller.key_id)


@page.get("/metrics")
def prometheus(ctx: Context) -> Response:
    """Prometheus metrics (no key: counts and timings only; see cloud/metrics.py)."""
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)


def _page_file(name: str, media: str) -> FileResponse:
    return FileResponse(WEB_DIR / name, media_type=media, headers=PAGE_HEADERS)


@page.get("/")
def index() -> FileResponse:
    return _page_file("index.html", "text/html; charset=utf-8")


@page.get("/app.js")
def app_js() -> FileResponse:
    return _page_file("app.js", "text/javascript; charset=utf-8")


@page.get("/app.css")
def app_css() -> FileResponse:
    return _page_file("app.css", "text/css; charset=utf-8")
