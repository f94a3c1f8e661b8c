"""Users, keys and roles on a real uvicorn: 401 against 403, revocation at once."""

from __future__ import annotations

import sqlite3

from tests.helpers.services import Stack, call


def http(method: str, url: str, body: object = None, *, key: str | None = None):  # type: ignore[no-untyped-def]
    status, parsed, headers, _ = call(method, url, body, key=key)
    return status, parsed, headers


def new_user(stack: Stack, name: str, role: str) -> str:
    status, body, _ = http("POST", stack.url + "/api/v1/users", {"name": name, "role": role}, key=stack.key)
    assert status == 201, body
    assert body["user"] == {"name": name, "role": role, "created_at": body["user"]["created_at"],
                            "disabled_at": None, "active_keys": 1}
    return body["key"]["key"]


def test_viewer_may_read_but_not_manage(stack: Stack) -> None:
    key = new_user(stack, "vera", "viewer")
    assert http("GET", stack.url + "/api/v1/whoami", key=key)[1]["role"] == "viewer"
    status, body, _ = http("POST", stack.url + "/api/v1/query", {"query": "oom_events | last 1h"}, key=key)
    assert status == 200 and len(body["rows"]) == 2 and body["cluster"] == "default"
    for path in ("/api/v1/nodes", "/api/v1/tables", "/api/v1/clusters"):
        assert http("GET", stack.url + path, key=key)[0] == 200, path
    denied = [("POST", "/api/v1/keys", {"label": "mine"}), ("GET", "/api/v1/keys", None),
              ("GET", "/api/v1/users", None), ("POST", "/api/v1/users", {"name": "eve", "role": "admin"}),
              ("DELETE", "/api/v1/users/admin", None), ("DELETE", f"/api/v1/keys/{stack.key[:12]}", None),
              ("POST", "/api/v1/clusters", {"name": "x", "address": "127.0.0.1:1"}),
              ("DELETE", "/api/v1/clusters/default", None)]
    for method, path, body in denied:
        status, err, hdrs = http(method, stack.url + path, body, key=key)
        assert status == 403, (method, path, status, err)
        assert err["error"]["code"] == "forbidden" and "admin role" in err["error"]["message"]
        assert "www-authenticate" not in {k.lower() for k in hdrs}
    # a request without a key is 401 even where a viewer would get 403
    assert http("POST", stack.url + "/api/v1/keys", {"label": "x"})[0] == 401


def test_keys_are_shown_once_listed_by_prefix_and_revoked_at_once(stack: Stack) -> None:
    status, made, _ = http("POST", stack.url + "/api/v1/keys", {"label": "ci"}, key=stack.key)
    assert status == 201 and made["key"].startswith(made["id"] + "_") and made["label"] == "ci"
    assert made["user"] == "admin" and made["revoked_at"] is None
    key = made["key"]
    assert http("GET", stack.url + "/api/v1/whoami", key=key)[0] == 200
    status, listed, _ = http("GET", stack.url + "/api/v1/keys", key=stack.key)
    assert status == 200 and made["id"] in [k["id"] for k in listed]
    assert all("key" not in k and "digest" not in k for k in listed)
    assert key not in str(listed)
    assert next(k for k in listed if k["id"] == made["id"])["last_used_at"] is not None

    assert http("DELETE", stack.url + f"/api/v1/keys/{made['id']}", key=stack.key)[0] == 204
    status, err, _ = http("GET", stack.url + "/api/v1/whoami", key=key)
    assert status == 401 and err["error"]["message"] == "invalid or revoked API key"
    assert http("DELETE", stack.url + f"/api/v1/keys/{made['id']}", key=stack.key)[0] == 404
    assert http("DELETE", stack.url + "/api/v1/keys/nonsense", key=stack.key)[0] == 404
    # the revocation is in the metadata store, not only in memory
    db = sqlite3.connect(stack.root / "cloud" / "cloud.sqlite")
    assert db.execute("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = ?", (made["id"],)).fetchone() == (1,)
    db.close()


def test_disabling_a_user_revokes_its_keys_and_an_admin_cannot_remove_itself(stack: Stack) -> None:
    key = new_user(stack, "alice", "admin")
    status, second, _ = http("POST", stack.url + "/api/v1/keys", {"user": "alice", "label": "laptop"}, key=key)
    assert status == 201 and second["user"] == "alice"
    assert http("POST", stack.url + "/api/v1/users", {"name": "alice"}, key=stack.key)[0] == 409
    assert http("DELETE", stack.url + "/api/v1/users/alice", key=stack.key)[0] == 204
    assert http("GET", stack.url + "/api/v1/whoami", key=key)[0] == 401
    assert http("GET", stack.url + "/api/v1/whoami", key=second["key"])[0] == 401
    users = {u["name"]: u for u in http("GET", stack.url + "/api/v1/users", key=stack.key)[1]}
    assert users["alice"]["disabled_at"] is not None and users["alice"]["active_keys"] == 0
    status, err, _ = http("DELETE", stack.url + "/api/v1/users/admin", key=stack.key)
    assert status == 409 and "cannot remove yourself" in err["error"]["message"]
    assert http("POST", stack.url + "/api/v1/keys", {"user": "nobody"}, key=stack.key)[0] == 404
    assert http("POST", stack.url + "/api/v1/users", {"name": "Bad Name"}, key=stack.key)[0] == 422


def test_every_operation_but_health_needs_a_key(stack: Stack) -> None:
    status, schema, _, _ = call("GET", stack.url + "/openapi.json")
    assert status == 200
    operations = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
    assert len(operations) >= 14
    for method, path in operations:
        concrete = path.replace("{name}", "x").replace("{key_id}", "pxo_00000000")
        body = {} if method == "POST" else None
        status, err, _ = http(method, stack.url + concrete, body)
        if path == "/api/v1/health":
            assert status == 200
        else:
            assert status == 401, (method, path, status)
            assert err["error"]["code"] == "unauthorized"
