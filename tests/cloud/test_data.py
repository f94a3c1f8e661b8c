"""Tables, nodes, clusters and answer formats (JSON, CSV, Arrow) on a real uvicorn;
the cluster token between cloud and collector."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa

from tests.helpers.services import Service, Stack, bootstrap, call


def test_query_answers_csv_and_arrow_by_accept(stack: Stack) -> None:
    q = {"query": "SELECT pid, comm, anon_rss_bytes FROM oom_events ORDER BY pid", "sql": True}
    status, _, hdrs, raw = call("POST", stack.url + "/api/v1/query", q, key=stack.key, headers={"Accept": "text/csv"})
    assert status == 200 and hdrs["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows == [["pid", "comm", "anon_rss_bytes"], ["101", "proc101", "536870912"],
                    ["102", "proc102", "536870912"]]
    assert hdrs["x-pxo-rows"] == "2" and hdrs["x-pxo-partial"] == "false" and hdrs["x-pxo-nodes"] == "node-1=ok"

    arrow = "application/vnd.apache.arrow.stream"
    status, _, hdrs, raw = call("POST", stack.url + "/api/v1/query", q, key=stack.key, headers={"Accept": arrow})
    assert status == 200 and hdrs["content-type"] == arrow
    table = pa.ipc.open_stream(raw).read_all()
    assert table.column("pid").to_pylist() == [101, 102] and table.schema.field("anon_rss_bytes").type == pa.uint64()

    status, body, _, _ = call("POST", stack.url + "/api/v1/query", q, key=stack.key,
                              headers={"Accept": "text/html, application/json;q=0.9"})
    assert status == 200 and body["cluster"] == "default" and len(body["rows"]) == 2
    status, body, _, _ = call("POST", stack.url + "/api/v1/query", q, key=stack.key, headers={"Accept": "image/png"})
    assert status == 406 and body["error"]["code"] == "not_acceptable"
    # a refused query is still a JSON error, whatever format was asked for
    status, body, _, _ = call("POST", stack.url + "/api/v1/query", {"query": "nope | last 1h"}, key=stack.key,
                              headers={"Accept": "text/csv"})
    assert status == 400 and body["error"]["code"] == "bad_query"


def test_tables_have_column_descriptions(stack: Stack) -> None:
    status, tables, _, _ = call("GET", stack.url + "/api/v1/tables", key=stack.key)
    assert status == 200
    by_name = {t["name"]: t for t in tables}
    assert [t["name"] for t in tables] == sorted(by_name)
    assert {"oom_events", "kill_events", "probe_status"} <= set(by_name)
    oom = by_name["oom_events"]
    assert oom["description"] and oom["columns"][0] == {
        "name": "time", "type": "TIMESTAMP", "description": "When it happened (UTC, microseconds)"}
    assert all(c["description"] for c in oom["columns"])


def test_clusters_default_add_remove(stack: Stack) -> None:
    url = stack.url + "/api/v1/clusters"
    status, clusters, _, _ = call("GET", url, key=stack.key)
    assert clusters == [{"name": "default", "address": stack.collector_addr, "default": True,
                         "authenticated": False, "tls": False}]
    status, made, _, _ = call("POST", url, {"name": "dead", "address": "127.0.0.1:9", "token": "t" * 20},
                              key=stack.key)
    assert status == 201 and made == {"name": "dead", "address": "127.0.0.1:9", "default": False,
                                      "authenticated": True, "tls": False}
    assert "t" * 20 not in str(call("GET", url, key=stack.key)[1])  # the token is never shown
    status, body, _, _ = call("GET", stack.url + "/api/v1/nodes?cluster=dead", key=stack.key)
    assert status == 502 and "127.0.0.1:9" in body["error"]["message"]
    status, body, _, _ = call("GET", stack.url + "/api/v1/nodes", key=stack.key)
    assert status == 200 and body["cluster"] == "default" and body["nodes"][0]["node"] == "node-1"
    assert call("DELETE", url + "/default", key=stack.key)[0] == 409
    assert call("DELETE", url + "/dead", key=stack.key)[0] == 204
    assert call("GET", stack.url + "/api/v1/nodes?cluster=dead", key=stack.key)[0] == 404


def test_collector_checks_the_cluster_token(tmp_path: Path, services: list[Service]) -> None:
    token = "s3cret-cluster-token-0123456789"
    collector = Service("collector", ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "col")],
                        tmp_path / "col", env={"PXO_COLLECTOR_CLUSTER_TOKEN": token})
    services.append(collector)
    addr = collector.wait_addr()

    def cloud(name: str, env: dict[str, str]) -> str:
        s = Service("cloud", ["serve", "--data-dir", str(tmp_path / name), "--host", "127.0.0.1", "--port", "0",
                              "--collector", addr], tmp_path / name, env=env)
        services.append(s)
        return s.wait_addr()

    good, bad = cloud("good", {"PXO_CLOUD_CLUSTER_TOKEN": token}), cloud("bad", {})
    assert call("GET", good + "/api/v1/health")[1]["collector"] == "ok"
    assert call("GET", bad + "/api/v1/health")[1]["collector"] == "unreachable"

    key = bootstrap(tmp_path / "bad")
    status, body, _, _ = call("GET", bad + "/api/v1/nodes", key=key)
    assert status == 502 and "refused the cluster token" in body["error"]["message"]
    assert "missing cluster token" in body["error"]["message"]
    key = bootstrap(tmp_path / "good")
    assert call("GET", good + "/api/v1/tables", key=key)[:2] == (200, [])  # ListTables, token checked
    assert call("GET", good + "/api/v1/nodes", key=key)[1] == {"cluster": "default", "nodes": []}


def test_production_refuses_unsafe_settings(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pxo.cloud", "serve", "--data-dir", str(tmp_path),
                        "--environment", "production", "--rate-limit", "0"], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unsafe for production" in r.stderr and "cluster token" in r.stderr and "rate limiting" in r.stderr
