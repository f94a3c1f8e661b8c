"""Clusters added later (`pxo clusters add`, POST /api/v1/clusters) reached with mutual TLS:
a real cloud queries a real collector (and its edge) that runs with TLS on loopback, with
the CA, client certificate and key of the cluster's record; without them, or with a
foreign CA's, the same cloud answers 502 naming TLS. The key is kept in the cloud's 0600
store and never shown."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.cloud.db import MIGRATIONS, Database
from pxo.common.tls import TlsFiles, generate_cluster
from tests.helpers import cli
from tests.helpers.seeding import seed_store
from tests.helpers.services import Service, bootstrap, http, start_cloud, start_collector, start_edge
from tests.helpers.tls import tls_args

TOKEN = "far-cluster-token-0123456789"


def pem(f: TlsFiles) -> dict[str, str]:
    return {"tls_ca": f.ca.read_text(), "tls_cert": f.cert.read_text(), "tls_key": f.key.read_text()}


@pytest.fixture(scope="module")
def far(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A TLS collector with one seeded TLS edge (another cluster), and a cloud that knows nothing of it."""
    root = tmp_path_factory.mktemp("far")
    services: list[Service] = []
    try:
        certs = generate_cluster(root / "tls")
        _, collector = start_collector(services, root / "collector", "--heartbeat-interval", "0.5",
                                       "--cluster-token", TOKEN, *tls_args(certs["collector"]))
        seed_store(root / "edge", [101, 102])
        start_edge(services, root / "edge", collector, "node-far", "--sources", "[]", *tls_args(certs["edge"]))
        # the cloud's own (deploy-time) cluster is elsewhere and down: "far" is added later
        cloud, url = start_cloud(services, root / "cloud", "127.0.0.1:9")
        key = bootstrap(root / "cloud")
        yield {"root": root, "certs": certs, "collector": collector, "url": url, "key": key, "cloud": cloud}
    finally:
        for s in reversed(services):
            s.stop()


def pxo(far: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PXO_API_URL": far["url"], "PXO_API_KEY": far["key"], "XDG_CONFIG_HOME": str(far["root"] / "cfg")}
    return cli.pxo(*args, env=env, stdin=stdin)


def nodes(far: dict, cluster: str) -> tuple[int, dict]:
    status, body, _ = http("GET", f"{far['url']}/api/v1/nodes?cluster={cluster}", key=far["key"])
    return status, body


def test_a_cluster_added_with_tls_is_queried_over_tls(far: dict) -> None:
    certs, url, key = far["certs"], far["url"], far["key"]
    # without the certificates: a 502 that says TLS is what is missing
    status, body, _ = http("POST", url + "/api/v1/clusters",
                           {"name": "far", "address": far["collector"], "token": TOKEN}, key=key)
    assert status == 201, body
    status, body = nodes(far, "far")
    assert status == 502 and body["error"]["code"] == "collector_unavailable", body
    assert "requires TLS" in body["error"]["message"] and "--tls-ca" in body["error"]["message"]

    # `pxo clusters add --tls-*`: the same cloud now gets in, over TLS, and asks the edge behind it
    f = certs["cloud"]
    r = pxo(far, "clusters", "add", "far", far["collector"], "--tls-ca", str(f.ca), "--tls-cert", str(f.cert),
            "--tls-key", str(f.key), "--token-stdin", stdin=TOKEN + "\n")
    assert r.returncode == 0 and f"cluster far at {far['collector']}, mutual TLS" in r.stderr, r.stderr
    end = time.monotonic() + 20
    while True:  # the edge registers within a heartbeat or two
        status, body = nodes(far, "far")
        assert status == 200, body
        if [n["node"] for n in body["nodes"] if n["state"] == "live"] == ["node-far"] or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert [n["node"] for n in body["nodes"] if n["state"] == "live"] == ["node-far"], body
    status, body, _ = http("POST", url + "/api/v1/query", {"query": "oom_events | last 1h", "cluster": "far"},
                           key=key)
    assert status == 200 and len(body["rows"]) == 2 and body["cluster"] == "far", body

    # never shown again: no certificate or key in any answer about clusters
    r = pxo(far, "clusters", "list", "-o", "json")
    status, listed, _ = http("GET", url + "/api/v1/clusters", key=key)
    for text in (r.stdout, str(listed)):
        assert "far" in text and "BEGIN" not in text and "PRIVATE" not in text
    assert {c["name"]: c["tls"] for c in listed}["far"] is True  # ... but that it has TLS is
    # ... but kept by the cloud, in its private store
    db = far["root"] / "cloud" / "cloud.sqlite"
    for p in (db, db.with_name("cloud.sqlite-wal")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    with sqlite3.connect(db) as con:
        (stored,) = con.execute("SELECT tls_key FROM clusters WHERE name = 'far'").fetchone()
    assert stored == f.key.read_text()

    # a client certificate of another CA: refused at the handshake, and said so
    other = generate_cluster(far["root"] / "other")["cloud"]
    status, body, _ = http("POST", url + "/api/v1/clusters", {"name": "far", "address": far["collector"],
                                                              "token": TOKEN, **pem(other)}, key=key)
    assert status == 201
    status, body = nodes(far, "far")
    assert status == 502 and "TLS handshake failed" in body["error"]["message"], body
    # and back to plain text: the client is remade, and refused again
    assert http("POST", url + "/api/v1/clusters", {"name": "far", "address": far["collector"], "token": TOKEN},
                key=key)[0] == 201
    status, body = nodes(far, "far")
    assert status == 502 and "requires TLS" in body["error"]["message"]


def test_bad_tls_input_is_one_sentence(far: dict) -> None:
    certs, url, key = far["certs"], far["url"], far["key"]
    good = pem(certs["cloud"])
    base = {"name": "bad", "address": far["collector"]}
    cases = {
        "TLS: TLS needs tls_ca, tls_cert and tls_key together; missing tls_key": {**good, "tls_key": ""},
        "TLS: tls_key does not belong to tls_cert": {**good, "tls_key": pem(certs["edge"])["tls_key"]},
        "TLS: tls_ca: not a PEM file": {**good, "tls_ca": "hello"},
        "TLS: tls_key: not an unencrypted PEM private key": {**good, "tls_key": good["tls_cert"]},
    }
    for message, fields in cases.items():
        status, body, _ = http("POST", url + "/api/v1/clusters", {**base, **fields}, key=key)
        assert status == 400 and body["error"] == {"code": "invalid_request", "message": message}, body
    status, listed, _ = http("GET", url + "/api/v1/clusters", key=key)
    assert "bad" not in [c["name"] for c in listed]  # nothing stored
    f = certs["cloud"]
    r = pxo(far, "clusters", "add", "bad", far["collector"], "--tls-ca", str(f.ca), "--tls-cert", str(f.cert))
    assert r.returncode == 1 and r.stderr.strip() == \
        "pxo: TLS needs --tls-ca, --tls-cert and --tls-key together; missing --tls-key"
    r = pxo(far, "clusters", "add", "bad", far["collector"], "--tls-ca", str(f.ca), "--tls-cert", str(f.cert),
            "--tls-key", "/nonexistent/cloud.key")
    assert r.returncode == 1 and r.stderr.strip() == \
        "pxo: --tls-key /nonexistent/cloud.key: cannot read it (No such file or directory)"


def test_migration_3_adds_tls_to_existing_clusters(tmp_path: Path) -> None:
    path = tmp_path / "cloud.sqlite"
    with sqlite3.connect(path) as con:  # a store as the previous version left it
        con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for number, script in enumerate(MIGRATIONS[:2], start=1):
            con.executescript(script)
            con.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        con.execute("INSERT INTO clusters (name, address, token, is_default, created_at) "
                    "VALUES ('old', '10.0.0.5:50700', 'tok', 1, 1.0)")
    db = Database(path)
    try:
        assert db.schema_version == len(MIGRATIONS) == 3
        (old,) = db.clusters()
        assert (old.name, old.token, old.is_default, old.tls) == ("old", "tok", True, False)
        certs = generate_cluster(tmp_path / "tls")
        p = pem(certs["cloud"])
        new = db.put_cluster("old", "10.0.0.6:50700", "tok", tls=(p["tls_ca"], p["tls_cert"], p["tls_key"]))
        assert new.tls and new.tls_key == p["tls_key"] and new.is_default
        assert "PRIVATE" not in repr(new)  # never in a log line by accident
        assert not db.put_cluster("old", "10.0.0.6:50700", "tok").tls  # as given: plain again
    finally:
        db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
