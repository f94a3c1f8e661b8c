"""The cloud's GET /metrics on its own HTTP port, scraped for real after real
requests through a real stack (collector, edge, cloud on uvicorn)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.services import Stack, call


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # no key needed
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def req(method: str, route: str, status: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("pxo_cloud_requests_total", (("method", method), ("route", route), ("status", str(status))))


def test_requests_by_route_and_status(stack: Stack) -> None:
    status, body, _, _ = call("POST", f"{stack.url}/api/v1/query", {"query": "oom_events | last 1h"}, key=stack.key)
    assert status == 200 and len(body["rows"]) == 2
    assert call("POST", f"{stack.url}/api/v1/query", {"query": "oom_events | last 1x"}, key=stack.key)[0] == 400
    assert call("GET", f"{stack.url}/api/v1/whoami")[0] == 401
    assert call("DELETE", f"{stack.url}/api/v1/keys/pxo_00000000", key=stack.key)[0] == 404
    assert call("GET", f"{stack.url}/no/such/path")[0] == 404
    assert call("POST", f"{stack.url}/api/v1/query", data=b"x" * (128 * 1024), key=stack.key)[0] == 413
    m = scrape(stack.url)
    assert m[req("POST", "/api/v1/query", 200)] == 1
    assert m[req("POST", "/api/v1/query", 400)] == 1
    assert m[req("GET", "/api/v1/whoami", 401)] == 1
    assert m[req("DELETE", "/api/v1/keys/{key_id}", 404)] == 1  # the template, not the raw path
    assert m[req("GET", "(unmatched)", 404)] == 1
    assert m[req("POST", "(unmatched)", 413)] == 1  # refused before routing, still counted
    assert m[("pxo_cloud_request_seconds_count", (("method", "POST"), ("route", "/api/v1/query")))] == 2
    assert scrape(stack.url)[req("GET", "/metrics", 200)] == 1
