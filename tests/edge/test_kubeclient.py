"""edge/kubeclient.py: the edge's own Kubernetes API client, against the loopback API server
(tests/helpers/kubeapi.py), over plain HTTP and over mutual TLS, and from kubeconfigs."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from pxo.common.tls import generate_material
from pxo.edge.attribution import KubePodWatcher
from pxo.edge.kubeclient import ConfigError, KubeClient, KubeError
from tests.helpers.kubeapi import KubeAPI, pod

NODE = "node-1"
UID = "0b7c7a2e-1f2b-4c1e-9a3f-0123456789ab"
CID = "ab" * 32


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_requests_and_their_errors(tmp_path: Path) -> None:
    with KubeAPI(token="t") as api:
        api.put_pod(pod("web-0", uid=UID, node=NODE, namespace="shop", containers={"web": CID}))
        c = KubeClient(api.url, token="t")
        items = c.request("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={NODE}"})["items"]
        assert [p["metadata"]["name"] for p in items] == ["web-0"]
        with pytest.raises(KubeError) as exc:
            KubeClient(api.url, token="wrong").request("GET", "/api/v1/pods")
        assert exc.value.status == 401
        with pytest.raises(KubeError) as exc:
            c.request("PATCH", "/api/v1/namespaces/shop/events/none", body={"count": 2})
        assert exc.value.status == 404
    with pytest.raises(KubeError) as exc:  # nobody listens there any more
        c.request("GET", "/api/v1/pods", timeout=(2, 2))
    assert exc.value.status == 0 and "Connection" in exc.value.reason


def test_a_kubeconfig_with_inline_certificates_reaches_an_https_server_with_mutual_tls(tmp_path: Path) -> None:
    material = generate_material(hosts=["127.0.0.1"])
    server_side, client_side = material["collector"], material["edge"]
    for name, data in (("ca.crt", server_side.ca), ("server.crt", server_side.cert), ("server.key", server_side.key)):
        (tmp_path / name).write_bytes(data)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca.crt"))
    tls.load_cert_chain(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    tls.verify_mode = ssl.CERT_REQUIRED  # a client without the CA's certificate is turned away
    with KubeAPI(token=None, tls=tls) as api:
        api.put_pod(pod("web-0", uid=UID, node=NODE, namespace="shop", containers={"web": CID}))
        config = tmp_path / "kubeconfig"
        config.write_text(f"""
apiVersion: v1
kind: Config
current-context: x
clusters: [{{name: c, cluster: {{server: "{api.url}", certificate-authority-data: {b64(client_side.ca)}}}}}]
users:
- name: u
  user: {{client-certificate-data: {b64(client_side.cert)}, client-key-data: {b64(client_side.key)}}}
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
""")
        c = KubeClient.from_kubeconfig([config])
        assert c.host.startswith("https://") and c.authorization() is None
        assert c.request("GET", "/api/v1/pods")["items"][0]["metadata"]["uid"] == UID
        # without the client certificate the server refuses the handshake
        with pytest.raises(KubeError) as exc:
            KubeClient(api.url, ca_data=client_side.ca.decode()).request("GET", "/api/v1/pods")
        assert exc.value.status == 0
        # without the CA the client refuses the server
        with pytest.raises(KubeError, match="CERTIFICATE_VERIFY_FAILED"):
            KubeClient(api.url).request("GET", "/api/v1/pods")


def test_kubeconfig_paths_merging_and_what_is_not_supported(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    first = tmp_path / "first"
    first.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443/", certificate-authority: certs/ca.crt}}]
users: [{name: u, user: {tokenFile: certs/token}}]
""")
    second = tmp_path / "second"
    second.write_text("""
apiVersion: v1
kind: Config
current-context: x
clusters: [{name: c, cluster: {server: "https://shadowed:1"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
""")
    (tmp_path / "certs" / "token").write_text("from-file\n")
    c = KubeClient.from_kubeconfig([first, second])
    assert c.host == "https://10.0.0.1:6443"  # the first file to name a cluster wins
    assert c.ca_file == tmp_path / "certs" / "ca.crt"  # relative to the file that says it
    assert c.authorization() == "Bearer from-file"
    exec_user = tmp_path / "exec"
    exec_user.write_text("""
current-context: x
clusters: [{name: c, cluster: {server: "https://10.0.0.1"}}]
users: [{name: u, user: {exec: {command: aws}}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
""")
    with pytest.raises(ConfigError, match="authenticates with exec, which the edge does not support"):
        KubeClient.from_kubeconfig([exec_user])
    with pytest.raises(ConfigError, match="no context 'y'"):
        (tmp_path / "noctx").write_text("current-context: y\n")
        KubeClient.from_kubeconfig([tmp_path / "noctx"])


def test_in_cluster_over_ipv6(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa")
    (tmp_path / "ca.crt").write_text("")
    c = KubeClient.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert c.host == "https://[fd00::1]:443"


def test_an_edge_in_a_cluster_still_does_not_load_the_official_client(tmp_path: Path) -> None:
    with KubeAPI(token="t") as api:
        config = api.kubeconfig(tmp_path)
        code = ("import sys; from pxo.edge.attribution import KubePodWatcher; "
                f"w = KubePodWatcher.from_environment('{NODE}', environ={{'KUBECONFIG': '{config}'}}); "
                "w.start(); import time; time.sleep(0.5); w.stop(); "
                "print(w is not None, sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'urllib3'}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "True []"
        assert api.lists(), "the watcher listed the pods"


def test_watcher_over_https_follows_pods(tmp_path: Path) -> None:
    material = generate_material(hosts=["127.0.0.1"])["collector"]
    for name, data in (("ca.crt", material.ca), ("s.crt", material.cert), ("s.key", material.key)):
        (tmp_path / name).write_bytes(data)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(tmp_path / "s.crt"), str(tmp_path / "s.key"))
    with KubeAPI(token="t", tls=tls) as api:
        w = KubePodWatcher(node=NODE, client=KubeClient(api.url, token="t", ca_file=tmp_path / "ca.crt"),
                           watch_timeout=lambda: 30, backoff=(0.01, 0.05))
        w.start()
        try:
            api.put_pod(pod("web-0", uid=UID, node=NODE, namespace="shop", containers={"web": CID}))
            for _ in range(200):
                if w.lookup(UID, CID) is not None:
                    break
                __import__("time").sleep(0.02)
            assert w.lookup(UID, CID) == ("shop", "web-0", "web")
        finally:
            w.stop()
