"""One error path (cloud/errors.py) on a real uvicorn: whatever refuses a request (a route,
FastAPI's schema check, Starlette's router, the body limit before any route), the answer
is JSON {"error": {"code", "message", ...}} with the status and headers the README names."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.services import Service, call, start_lone_cloud


def test_every_refusal_is_one_json_shape(tmp_path: Path, services: list[Service]) -> None:
    url, key = start_lone_cloud(services, tmp_path, "--max-body-bytes", "4096")
    api = url + "/api/v1"
    cases: list[tuple[str, str, object, dict[str, str], int, str]] = [
        ("GET", url + "/no/such/path", None, {}, 404, "not_found"),                    # Starlette's router
        ("PUT", api + "/users", {"name": "x"}, {}, 405, "method_not_allowed"),
        ("GET", api + "/whoami", None, {"Authorization": "Bearer nope"}, 401, "unauthorized"),  # a route
        ("POST", api + "/users", {"name": "Not A Name"}, {}, 422, "invalid_request"),  # FastAPI's check
        ("POST", api + "/clusters", {"name": "c", "address": "h:1", "tls_ca": "x"}, {}, 400, "invalid_request"),
        ("DELETE", api + "/clusters/default", None, {}, 409, "conflict"),
        ("POST", api + "/query", {"query": "x"}, {"Accept": "image/png"}, 406, "not_acceptable"),
        ("GET", api + "/nodes", None, {}, 502, "collector_unavailable"),               # nothing at 127.0.0.1:9
        ("POST", api + "/query", {"query": "x" * 5000}, {}, 413, "too_large"),          # the body limit
    ]
    for method, where, body, headers, status, code in cases:
        got, err, hdrs, raw = call(method, where, body, key=None if "Authorization" in headers else key,
                                   headers=headers)
        assert got == status, (method, where, got, raw)
        assert hdrs["content-type"] == "application/json", (method, where)
        assert err["error"]["code"] == code and err["error"]["message"], (method, where, err)
        assert ("www-authenticate" in hdrs) == (status == 401), (method, where)
    # 405 names every method of every route on the path (two routes share /api/v1/users)
    assert call("PUT", api + "/users", {}, key=key)[2]["allow"] == "GET, POST"
    assert call("POST", url + "/openapi.json")[2]["allow"] == "GET, HEAD"
    assert call("PATCH", api + "/keys/pxo_00000000", key=key)[2]["allow"] == "DELETE"
