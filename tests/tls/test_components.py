"""Mutual TLS between edge, collector and cloud: real processes on loopback.

The normal path (an edge registers, a query goes cloud -> collector -> edge) works
with certificates of the cluster CA; a client without a certificate, or with one
of another CA, is refused by the edge and by the collector, on every RPC; the files
are 0600; and a second generation (a re-deploy) makes the old certificates useless.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pxo.cloud.collector_client import CollectorClient
from pxo.cloud.errors import CollectorUnavailable
from pxo.common.addr import read_addr_file
from pxo.common.contract import NodeState
from pxo.common.tls import ROLES, TlsFiles, channel_factory, generate_cluster, role_name
from pxo.v1 import pxo_pb2, pxo_pb2_grpc
from tests.helpers.seeding import seed_store
from tests.helpers.services import Service, bootstrap, http, start_cloud, start_collector, start_edge
from tests.helpers.tls import tls_args


def foreign(tmp_path: Path, cluster: dict[str, TlsFiles], role: str) -> TlsFiles:
    """A client that trusts our CA (so it gets as far as the server's check) but holds a
    certificate and key of another CA."""
    other = generate_cluster(tmp_path / "other-ca")
    return TlsFiles(cluster[role].ca, other[role].cert, other[role].key)


def no_cert(files: TlsFiles, peer: str) -> Callable[[str], grpc.Channel]:
    """TLS that trusts our CA but presents no client certificate."""
    creds = grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes())
    return lambda a: grpc.secure_channel(a, creds, options=[("grpc.ssl_target_name_override", role_name(peer))])


def live_nodes(addr: str, dial: Callable[[str], grpc.Channel]) -> list[str]:
    with dial(addr) as ch:
        nodes = pxo_pb2_grpc.CollectorStub(ch).ListNodes(pxo_pb2.ListNodesRequest(), timeout=5).nodes
    return [n.info.node for n in nodes if n.state == NodeState.LIVE]


def wait_live(addr: str, dial: Callable[[str], grpc.Channel], n: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(live_nodes(addr, dial)) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} live nodes after {timeout} s")


def register(dial: Callable[[str], grpc.Channel], addr: str) -> None:
    with dial(addr) as ch:
        info = pxo_pb2.NodeInfo(node="intruder", address="127.0.0.1:1")
        pxo_pb2_grpc.CollectorStub(ch).Register(pxo_pb2.RegisterRequest(node=info), timeout=5)


def collector_query(dial: Callable[[str], grpc.Channel], addr: str) -> None:
    with dial(addr) as ch:
        list(pxo_pb2_grpc.CollectorStub(ch).Query(pxo_pb2.QueryRequest(text="oom_events | last 1h"), timeout=5))


def edge_execute(dial: Callable[[str], grpc.Channel], addr: str) -> None:
    now = int(time.time() * 1e6)
    fragment = pxo_pb2.Fragment(sql="SELECT count(*) AS n FROM oom_events WHERE time >= $start AND time < $end",
                                start_unix_us=now - 3_600_000_000, end_unix_us=now)
    with dial(addr) as ch:
        list(pxo_pb2_grpc.EdgeStub(ch).Execute(fragment, timeout=5))


def edge_describe(dial: Callable[[str], grpc.Channel], addr: str) -> pxo_pb2.NodeInfo:
    with dial(addr) as ch:
        return pxo_pb2_grpc.EdgeStub(ch).Describe(pxo_pb2.DescribeRequest(), timeout=5)


def refused(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.fixture
def tls_cluster(tmp_path: Path, services: list[Service]) -> dict:
    """A collector and one seeded edge, both with mutual TLS of a fresh cluster CA."""
    certs = generate_cluster(tmp_path / "tls")
    _, collector = start_collector(services, tmp_path / "collector", "--heartbeat-interval", "0.5",
                                   "--expire-after", "2", *tls_args(certs["collector"]))
    seed_store(tmp_path / "edge", [101, 102])
    _, edge = start_edge(services, tmp_path / "edge", collector, "node-1", "--sources", "[]",
                         *tls_args(certs["edge"]))
    wait_live(collector, channel_factory(certs["cloud"], peer="collector"), 1)
    return {"certs": certs, "collector": collector, "edge": edge}


def test_files_are_private_and_name_their_role(tmp_path: Path) -> None:
    certs = generate_cluster(tmp_path / "tls")
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    files = sorted((tmp_path / "tls").iterdir())
    assert [p.name for p in files] == sorted(["ca.crt", *(f"{r}.{e}" for r in ROLES for e in ("crt", "key"))])
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    cert = x509.load_pem_x509_certificate(certs["collector"].cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"pxo-collector", "pxo-collector.pxo.svc", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    ca = x509.load_pem_x509_certificate(certs["collector"].ca.read_bytes())
    assert cert.issuer == ca.subject
    assert cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    assert not any(p.name == "ca.key" for p in files)  # nothing left that could sign a new certificate


def test_edge_registers_and_a_query_runs_over_tls(tls_cluster: dict, tmp_path: Path,
                                                  services: list[Service]) -> None:
    certs, collector = tls_cluster["certs"], tls_cluster["collector"]
    assert live_nodes(collector, channel_factory(certs["cloud"], peer="collector")) == ["node-1"]
    client = CollectorClient(collector, channel_factory=channel_factory(certs["cloud"], peer="collector"))
    try:
        answer = client.query("oom_events | last 1h")
    finally:
        client.close()
    assert sorted(r[[c["name"] for c in answer["columns"]].index("pid")] for r in answer["rows"]) == [101, 102]
    assert [n["state"] for n in answer["nodes"]] == ["ok"] and not answer["partial"]
    # and the whole front door: HTTP -> cloud -> (TLS) collector -> (TLS) edge
    _, url = start_cloud(services, tmp_path / "cloud", collector, *tls_args(certs["cloud"]))
    key = bootstrap(tmp_path / "cloud")
    status, body, _ = http("POST", url + "/api/v1/query", {"query": "oom_events | last 1h"}, key=key)
    assert status == 200, body
    assert len(body["rows"]) == 2


def test_the_collector_refuses_clients_without_a_cluster_certificate(tls_cluster: dict, tmp_path: Path) -> None:
    certs, collector = tls_cluster["certs"], tls_cluster["collector"]
    for dial in (grpc.insecure_channel, no_cert(certs["cloud"], "collector"),
                 channel_factory(foreign(tmp_path, certs, "cloud"), peer="collector")):
        assert refused(lambda d=dial: register(d, collector)) == grpc.StatusCode.UNAVAILABLE
        assert refused(lambda d=dial: collector_query(d, collector)) == grpc.StatusCode.UNAVAILABLE
        assert refused(lambda d=dial: live_nodes(collector, d)) == grpc.StatusCode.UNAVAILABLE
    # nothing registered on the way
    assert live_nodes(collector, channel_factory(certs["cloud"], peer="collector")) == ["node-1"]
    # the cloud's client says what went wrong in one sentence (here: the other side is of another CA)
    client = CollectorClient(collector, channel_factory=channel_factory(generate_cluster(tmp_path / "o2")["cloud"],
                                                                         peer="collector"))
    with pytest.raises(CollectorUnavailable, match="TLS handshake failed"):
        client.nodes()
    client.close()


def test_the_edge_refuses_clients_without_a_cluster_certificate(tls_cluster: dict, tmp_path: Path) -> None:
    certs, edge = tls_cluster["certs"], tls_cluster["edge"]
    for dial in (grpc.insecure_channel, no_cert(certs["collector"], "edge"),
                 channel_factory(foreign(tmp_path, certs, "collector"), peer="edge")):
        assert refused(lambda d=dial: edge_execute(d, edge)) == grpc.StatusCode.UNAVAILABLE
        assert refused(lambda d=dial: edge_describe(d, edge)) == grpc.StatusCode.UNAVAILABLE
    # with the collector's certificate the same calls are answered
    assert edge_describe(channel_factory(certs["collector"], peer="edge"), edge).node == "node-1"
    edge_execute(channel_factory(certs["collector"], peer="edge"), edge)


def test_each_certificate_may_only_do_its_role(tls_cluster: dict) -> None:
    """A node's certificate reaches no other node's data: only the collector's may ask an edge,
    only an edge's may register, only the cloud's may query the collector."""
    certs, collector, edge = tls_cluster["certs"], tls_cluster["collector"], tls_cluster["edge"]
    as_edge = channel_factory(certs["edge"], peer="collector")
    as_cloud = channel_factory(certs["cloud"], peer="collector")
    for role in ("edge", "cloud"):
        dial = channel_factory(certs[role], peer="edge")
        assert refused(lambda d=dial: edge_execute(d, edge)) == grpc.StatusCode.PERMISSION_DENIED
        assert refused(lambda d=dial: edge_describe(d, edge)) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: collector_query(as_edge, collector)) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: live_nodes(collector, as_edge)) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: register(as_cloud, collector)) == grpc.StatusCode.PERMISSION_DENIED
    register(as_edge, collector)  # an edge's certificate may
    with as_edge(collector) as ch:  # and the health service answers any cluster certificate
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status \
            == health_pb2.HealthCheckResponse.SERVING


def test_an_edge_with_a_foreign_certificate_cannot_register(tls_cluster: dict, tmp_path: Path,
                                                             services: list[Service]) -> None:
    certs, collector = tls_cluster["certs"], tls_cluster["collector"]
    intruder = foreign(tmp_path, certs, "edge")
    s, _ = start_edge(services, tmp_path / "intruder", collector, "intruder", "--sources", "[]",
                      *tls_args(intruder))
    plain, _ = start_edge(services, tmp_path / "plain", collector, "plain", "--sources", "[]")
    time.sleep(2)
    assert live_nodes(collector, channel_factory(certs["cloud"], peer="collector")) == ["node-1"]
    assert "unreachable" in s.log() and "unreachable" in plain.log()


def test_rotation_refuses_the_old_certificates(tmp_path: Path, services: list[Service]) -> None:
    old = generate_cluster(tmp_path / "tls")
    keep = tmp_path / "old"
    shutil.copytree(tmp_path / "tls", keep)
    old_cloud = TlsFiles(keep / "ca.crt", keep / "cloud.crt", keep / "cloud.key")
    new = generate_cluster(tmp_path / "tls")  # what a second `pxo deploy` does
    assert new["cloud"].ca == old["cloud"].ca and new["cloud"].ca.read_bytes() != old_cloud.ca.read_bytes()
    for p in (tmp_path / "tls").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    _, collector = start_collector(services, tmp_path / "collector", *tls_args(new["collector"]))
    assert live_nodes(collector, channel_factory(new["cloud"], peer="collector")) == []
    # the old set entire, and the old certificate with the new CA trusted: both refused
    for files in (old_cloud, TlsFiles(new["cloud"].ca, old_cloud.cert, old_cloud.key)):
        assert refused(lambda f=files: live_nodes(collector, channel_factory(f, peer="collector"))) \
            == grpc.StatusCode.UNAVAILABLE


def test_missing_or_partial_tls_settings_are_one_line(tmp_path: Path) -> None:
    certs = generate_cluster(tmp_path / "tls")
    missing = TlsFiles(certs["collector"].ca, tmp_path / "nope.crt", certs["collector"].key)
    r = subprocess.run([sys.executable, "-m", "pxo.collector", "--listen", "127.0.0.1:0", "--data-dir",
                        str(tmp_path / "c"), *tls_args(missing)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "pxo-collector: error: TLS: --tls-cert" in r.stderr and "no such file" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "pxo.edge", "--listen", "127.0.0.1:0", "--data-dir",
                        str(tmp_path / "e"), "--sources", "[]", *tls_args(missing)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "pxo-edge: error: TLS: --tls-cert" in r.stderr and "Traceback" not in r.stderr
    # a key that is not this certificate's
    wrong = TlsFiles(certs["edge"].ca, certs["edge"].cert, certs["cloud"].key)
    r = subprocess.run([sys.executable, "-m", "pxo.cloud", "serve", "--data-dir", str(tmp_path / "cl"),
                        "--port", "0", *tls_args(wrong)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "does not belong to" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pxo.collector", "--data-dir", str(tmp_path / "c"),
                        "--tls-ca", str(certs["collector"].ca)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "missing --tls-cert, --tls-key" in r.stderr


def test_health_stays_reachable_in_plain_text(tmp_path: Path, services: list[Service]) -> None:
    certs = generate_cluster(tmp_path / "tls")
    _, collector = start_collector(services, tmp_path / "collector", "--health-listen", "127.0.0.1:0",
                                   *tls_args(certs["collector"]))
    addr = read_addr_file(tmp_path / "collector" / "health.addr")  # written before collector.addr
    assert addr and addr != collector
    assert refused(lambda: live_nodes(collector, grpc.insecure_channel)) == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(addr) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="pxo.v1.Collector"),
                                                     timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # only health: the collector's own service is not on this port
        with pytest.raises(grpc.RpcError) as err:
            pxo_pb2_grpc.CollectorStub(ch).ListNodes(pxo_pb2.ListNodesRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.requires_bpf
def test_local_deploy_uses_tls_and_rotates_on_redeploy(tmp_path: Path) -> None:
    """`pxo deploy --local` makes <data_dir>/tls (0700, files 0600), runs every hop with
    mutual TLS, and a second deploy makes a new CA that refuses the first one's certificates."""
    import os

    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("PXO_API_URL", None)
    env.pop("PXO_API_KEY", None)
    data = tmp_path / "data" / "pxo" / "local"
    deploy = [sys.executable, "-m", "pxo.cli.main", "deploy", "--local", "--collector-port", "0",
              "--edge-port", "0", "--cloud-port", "0", "--node", "tls-node"]
    try:
        r = subprocess.run(deploy, capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr
        tls = data / "tls"
        assert stat.S_IMODE(tls.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tls.iterdir())
        shutil.copytree(tls, tmp_path / "first")
        first = TlsFiles(tmp_path / "first" / "ca.crt", tmp_path / "first" / "cloud.crt",
                         tmp_path / "first" / "cloud.key")
        collector = (data / "collector" / "collector.addr").read_text().strip()
        edge = (data / "edge" / "edge.addr").read_text().strip()
        # the deploy waited for the edge to register (over TLS); a cluster certificate gets past
        # the handshake and only then meets the cluster token check
        assert refused(lambda: live_nodes(collector, channel_factory(first, peer="collector"))) \
            == grpc.StatusCode.UNAUTHENTICATED
        assert edge_describe(channel_factory(TlsFiles(first.ca, tmp_path / "first" / "collector.crt",
                                                      tmp_path / "first" / "collector.key"), peer="edge"),
                             edge).node == "tls-node"
        assert refused(lambda: live_nodes(collector, grpc.insecure_channel)) == grpc.StatusCode.UNAVAILABLE
        assert refused(lambda: edge_describe(grpc.insecure_channel, edge)) == grpc.StatusCode.UNAVAILABLE

        r = subprocess.run(deploy, capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr
        assert (tls / "ca.crt").read_bytes() != first.ca.read_bytes()
        collector = (data / "collector" / "collector.addr").read_text().strip()
        new_cloud = TlsFiles(tls / "ca.crt", tls / "cloud.crt", tls / "cloud.key")
        assert refused(lambda: live_nodes(collector, channel_factory(new_cloud, peer="collector"))) \
            == grpc.StatusCode.UNAUTHENTICATED
        for old in (first, TlsFiles(new_cloud.ca, first.cert, first.key)):
            assert refused(lambda f=old: live_nodes(collector, channel_factory(f, peer="collector"))) \
                == grpc.StatusCode.UNAVAILABLE
    finally:
        subprocess.run([sys.executable, "-m", "pxo.cli.main", "delete", "--local"], capture_output=True,
                       timeout=60, env=env)


def test_edge_health_stays_reachable_in_plain_text(tmp_path: Path, services: list[Service]) -> None:
    certs = generate_cluster(tmp_path / "tls")
    _, edge = start_edge(services, tmp_path / "edge", "", "node-h", "--sources", "[]",
                         "--health-listen", "127.0.0.1:0", *tls_args(certs["edge"]))
    addr = read_addr_file(tmp_path / "edge" / "health.addr")  # written before edge.addr
    assert addr and addr != edge
    with grpc.insecure_channel(addr) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="pxo.v1.Edge"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert refused(lambda: pxo_pb2_grpc.EdgeStub(ch).Describe(pxo_pb2.DescribeRequest(), timeout=5)) \
            == grpc.StatusCode.UNIMPLEMENTED
    assert refused(lambda: edge_describe(grpc.insecure_channel, edge)) == grpc.StatusCode.UNAVAILABLE
