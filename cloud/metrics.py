"""Prometheus metrics of the cloud (the official client library), served at
GET /metrics on the cloud's own HTTP port, without a key (like /api/v1/health:
counts and timings only, no user, key or query text).

    pxo_cloud_requests_total{method,route,status}   every answered request
    pxo_cloud_request_seconds{method,route}         until the last byte of the answer

``route`` is the route's template (``/api/v1/keys/{key_id}``), never the raw
path, so the label's values are bounded by the routes; a path no route matches
is ``(unmatched)``.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "(unmatched)"


class CloudMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pxo_cloud_requests", "Requests answered, by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.seconds = Histogram("pxo_cloud_request_seconds", "Time to answer a request, by route",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by its route's template and the status sent."""

    def __init__(self, app: ASGIApp, *, metrics: CloudMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # an exception before any answer is a 500 to the client

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.seconds.labels(method, route).observe(time.monotonic() - started)
