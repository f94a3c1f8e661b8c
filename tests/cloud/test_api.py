"""The REST API on a real uvicorn, in front of a real collector and edge."""

from __future__ import annotations

import sqlite3

from tests.helpers.services import Stack, http


def test_health_needs_no_key(stack: Stack) -> None:
    status, body, _ = http("GET", stack.url + "/api/v1/health")
    assert status == 200 and body["status"] == "ok" and body["collector"] == "ok"


def test_missing_wrong_and_malformed_keys_get_401(stack: Stack) -> None:
    url = stack.url + "/api/v1/query"
    body = {"query": "oom_events | last 1h"}
    key_id, secret = stack.key[:12], stack.key[13:]  # pxo_<8 hex>_<secret, which may hold '_'>
    tampered = key_id + "_" + ("A" if secret[0] != "A" else "B") + secret[1:]
    cases = {
        "missing": (None, {}),
        "unknown": ("pxo_00000000_" + "x" * 43, {}),
        "tampered": (tampered, {}),
        "garbage": ("not-a-key", {}),
        "scheme": (None, {"Authorization": f"Basic {stack.key}"}),
    }
    for name, (key, headers) in cases.items():
        status, err, hdrs = http("POST", url, body, key=key, headers=headers)
        assert status == 401, name
        assert err["error"]["code"] == "unauthorized" and err["error"]["message"], name
        assert hdrs.get("www-authenticate") == "Bearer", name


def test_query_answers_with_columns_rows_and_node_status(stack: Stack) -> None:
    status, body, _ = http("POST", stack.url + "/api/v1/query", {"query": "oom_events | last 1h"}, key=stack.key)
    assert status == 200
    names = [c["name"] for c in body["columns"]]
    assert names[:3] == ["node", "time", "pid"]
    assert {"name": "anon_rss_bytes", "type": "uint64"} in body["columns"]
    pids = sorted(r[names.index("pid")] for r in body["rows"])
    assert pids == [101, 102]
    assert body["rows"][0][names.index("time")].endswith("Z")
    assert body["nodes"] == [{"node": "node-1", "state": "ok", "detail": "", "rows": 2}]
    assert body["partial"] is False and body["range"]["start"] < body["range"]["end"]


def test_bad_query_is_400_with_position_and_hint(stack: Stack) -> None:
    status, body, _ = http("POST", stack.url + "/api/v1/query", {"query": "oom_event | last 1h"}, key=stack.key)
    assert status == 400
    hint = body["error"].pop("hint")
    assert body["error"] == {"code": "bad_query", "message": "unknown table 'oom_event'", "line": 1, "column": 1}
    assert hint.startswith("did you mean oom_events? tables: ") and "kill_events" in hint
    status, body, _ = http("POST", stack.url + "/api/v1/query",
                           {"query": "SELECT * FROM read_text('/etc/shadow')", "sql": True}, key=stack.key)
    assert status == 400 and "read_text" in body["error"]["message"]
    status, body, _ = http("POST", stack.url + "/api/v1/query", {"nope": 1}, key=stack.key)
    assert status == 422 and body["error"]["code"] == "invalid_request"
    # an integer overflow names its expression as a field, not only in the message
    status, body, _ = http("POST", stack.url + "/api/v1/query",
                           {"query": "oom_events | extend x = pid * 9223372036854775807"}, key=stack.key)
    assert status == 400 and body["error"]["expression"] == "pid * 9223372036854775807", body


def test_keys_are_stored_hashed(stack: Stack) -> None:
    db = sqlite3.connect(stack.root / "cloud" / "cloud.sqlite")
    rows = db.execute("SELECT id, salt, digest FROM api_keys").fetchall()
    db.close()
    key_id, secret = stack.key[:12], stack.key[13:].encode()
    assert [r[0] for r in rows] == [key_id]  # the visible prefix only
    raw = b"".join(p.read_bytes() for p in (stack.root / "cloud").glob("cloud.sqlite*"))
    assert secret not in raw and stack.key.encode() not in raw
    status, who, _ = http("GET", stack.url + "/api/v1/whoami", key=stack.key)
    assert status == 200 and who == {"user": "admin", "role": "admin", "key": key_id}


def test_dead_collector_is_502(stack: Stack) -> None:
    stack.collector.stop()
    status, body, _ = http("POST", stack.url + "/api/v1/query", {"query": "oom_events | last 1h"}, key=stack.key)
    assert status == 502 and body["error"]["code"] == "collector_unavailable"
    assert http("GET", stack.url + "/api/v1/health")[1]["collector"] == "unreachable"
