"""`pxo deploy --kubernetes` and `pxo delete --kubernetes` as a user runs them:
the CLI as a subprocess, pointed by KUBECONFIG at a real HTTP server on
loopback that speaks the API calls the deploy makes (tests/helpers/kubeapi_apply.py).
The test plays the controllers: it sets the DaemonSet's and Deployments'
status and the edge pods. No real cluster is involved (deploy/README.md)."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import pytest
import yaml

from pxo.cli import kube
from pxo.cli.kube import TLS_CHECKSUM, TLS_SECRETS, TOKEN_SECRET, render, tls_checksum
from pxo.common.tls import ROLES, TlsMaterial, check_material
from pxo.edge import pins
from tests.helpers import cli
from tests.helpers.cluster import IMAGE, all_ready, cluster, created, pxo
from tests.helpers.kubeapi_apply import ApplyAPI, edge_pod


def tls_material(api: ApplyAPI) -> dict[str, TlsMaterial]:
    """What the TLS Secrets hold, as the real server keeps it (base64 in data), checked: PEM, the key
    belongs to the certificate, the certificate names its role and is signed by the CA next to it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    secrets = created(api)
    out = {}
    for role in ROLES:
        secret = secrets[("Secret", TLS_SECRETS[role])]
        assert secret["type"] == "kubernetes.io/tls" and "stringData" not in secret
        assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key"]
        raw = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        m = check_material(TlsMaterial(ca=raw["ca.crt"], cert=raw["tls.crt"], key=raw["tls.key"]))
        cert, ca = x509.load_pem_x509_certificate(m.cert), x509.load_pem_x509_certificate(m.ca)
        assert cert.subject.rfc4514_string().startswith(f"CN=pxo-{role}")
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        out[role] = m
    assert len({m.ca for m in out.values()}) == 1  # one cluster CA
    return out


def checksums(api: ApplyAPI) -> set[str]:
    return {o["spec"]["template"]["metadata"]["annotations"][TLS_CHECKSUM]
            for o in api.objects("daemonsets") + api.objects("deployments")}


def test_deploy_preflight_apply_and_ready(api: ApplyAPI, tmp_path: Path) -> None:
    nodes = cluster(api, "6.18.1-amd64", "5.15.0-91-generic", "5.4.0-150-generic")
    all_ready(api, nodes)
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE)
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert f"✓ API server at {api.url} is reachable (Kubernetes v1.33.1)" in err
    assert "✓ you may create the namespace" in err and "✓ you may create the edge's ClusterRole" in err
    assert "✓ node node-1: kernel 6.18.1-amd64; BTF unknown, cgroup unknown" in err
    assert "✓ node node-2: kernel 5.15.0-91-generic; BTF unknown" in err
    assert "✗ node node-3: kernel 5.4.0-150-generic is older than 5.8" in err  # a warning: the deploy goes on
    assert "edges ready 3/3; collector 1/1, cloud 1/1" in err and "pxo is running: 3 edges" in err

    # every manifest object was created as written, the image substituted, and the pod templates
    # carry the checksum of the certificates they mount
    material = tls_material(api)
    objs = created(api)
    for doc in render(IMAGE):
        got = objs.pop((doc["kind"], doc["metadata"]["name"]))
        if doc["kind"] in ("DaemonSet", "Deployment"):
            assert got["spec"]["template"]["metadata"]["annotations"].pop(TLS_CHECKSUM) == tls_checksum(material)
        for k, v in doc.items():
            if k != "metadata":
                assert got[k] == v, (doc["kind"], k)
        assert doc["metadata"]["labels"].items() <= got["metadata"]["labels"].items()
    # ... and the objects that are not in the manifests: the token and the certificates they reference
    secret = objs.pop(("Secret", TOKEN_SECRET))
    for role in ROLES:
        objs.pop(("Secret", TLS_SECRETS[role]))
    assert not objs
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    # the Secrets come before anything that mounts them
    posts = [p for m, p in api.mutations() if m == "POST"]
    assert posts.index("/api/v1/namespaces/pxo/secrets") < posts.index("/apis/apps/v1/namespaces/pxo/daemonsets")
    assert "PRIVATE KEY" not in r.stdout + r.stderr
    assert "kubectl -n pxo get secret pxo-tls-cloud -o jsonpath='{.data.tls\\.key}'" in err  # for clusters add
    ds = api.objects("daemonsets")[0]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE


def test_default_image_and_no_flag_with_a_kubeconfig(api: ApplyAPI, tmp_path: Path) -> None:
    from pxo.common.version import pxo_version

    all_ready(api, cluster(api, "6.18.0"))
    r = pxo(api, tmp_path, "deploy")  # no --local, a kubeconfig: Kubernetes
    assert r.returncode == 0, r.stderr
    (dep,) = [d for d in api.objects("deployments") if d["metadata"]["name"] == "pxo-cloud"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"pxo:{pxo_version()}"


def test_wait_names_the_bad_node_and_times_out(api: ApplyAPI, tmp_path: Path) -> None:
    nodes = cluster(api, "6.18.0", "6.18.0", "6.18.0")
    all_ready(api, nodes)
    api.set_status("daemonsets", "pxo-edge", {"desiredNumberScheduled": 3, "numberReady": 2,
                                              "updatedNumberScheduled": 3})
    api.put_pod(edge_pod("node-2", ready=False, waiting=("CrashLoopBackOff", "back-off 40s restarting failed "
                                                         "container=edge"),
                         last_terminated=(1, "Error", "pxo-edge: error: no BTF at /sys/kernel/btf/vmlinux"),
                         restarts=4))
    started = time.monotonic()
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE, "--timeout", "3")
    elapsed = time.monotonic() - started
    assert r.returncode == 1
    assert elapsed < 3 + 10  # the timeout, plus the CLI's start and the apply; never hangs
    last = r.stderr.strip().splitlines()
    assert "pxo: pxo was not ready within 3 s (edges ready 2/3; collector 1/1, cloud 1/1)" in r.stderr
    (line,) = [ln for ln in last if ln.startswith("  node ")]
    assert line.startswith("  node node-2: pod pxo-edge-node-2: Running: CrashLoopBackOff")
    assert "last exit 1 (Error): pxo-edge: error: no BTF at /sys/kernel/btf/vmlinux" in line
    assert "4 restarts" in line


def test_image_pull_and_missing_pod_are_named(api: ApplyAPI, tmp_path: Path) -> None:
    nodes = cluster(api, "6.18.0", "6.18.0", "6.18.0")
    all_ready(api, nodes[:1])
    api.set_status("daemonsets", "pxo-edge", {"desiredNumberScheduled": 3, "numberReady": 1,
                                              "updatedNumberScheduled": 3})
    api.put_pod(edge_pod("node-2", ready=False, waiting=("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"')))
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE, "--timeout", "1")
    assert r.returncode == 1
    assert f'node node-2: pod pxo-edge-node-2: Running: ImagePullBackOff: Back-off pulling image "{IMAGE}"' in r.stderr
    assert "node node-3: no edge pod on this node yet" in r.stderr


def test_succeeds_when_everything_becomes_ready(api: ApplyAPI, tmp_path: Path) -> None:
    nodes = cluster(api, "6.18.0", "6.18.0")
    api.set_status("daemonsets", "pxo-edge", {"desiredNumberScheduled": 2, "numberReady": 0,
                                              "updatedNumberScheduled": 2})
    api.put_pod(edge_pod("node-1", ready=False, waiting=("ContainerCreating", "")))

    def controllers() -> None:
        time.sleep(2.5)
        all_ready(api, nodes)

    t = threading.Thread(target=controllers)
    t.start()
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE, "--timeout", "30")
    t.join()
    assert r.returncode == 0, r.stderr
    assert "edges ready 0/2; collector 0/1, cloud 0/1" in r.stderr  # progress while waiting
    assert "node-1: pod pxo-edge-node-1: Running: ContainerCreating" in r.stderr
    assert "edges ready 2/2; collector 1/1, cloud 1/1" in r.stderr


def test_redeploy_rotates_the_certificates_and_keeps_the_token(api: ApplyAPI, tmp_path: Path) -> None:
    all_ready(api, cluster(api, "6.18.0"))
    assert pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE).returncode == 0
    token = created(api)[("Secret", TOKEN_SECRET)]["data"]["token"]
    first = tls_material(api)
    assert checksums(api) == {tls_checksum(first)}
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", "registry.example/pxo:10.0.0")
    assert r.returncode == 0, r.stderr
    assert "DaemonSet/pxo-edge replaced" in r.stderr and f"Secret/{TOKEN_SECRET} exists, kept" in r.stderr
    assert "PersistentVolumeClaim/pxo-cloud exists, kept" in r.stderr
    assert created(api)[("Secret", TOKEN_SECRET)]["data"]["token"] == token
    # rotation: every TLS Secret replaced by one of a new CA, and every pod template changed with it
    for role in ROLES:
        assert f"Secret/{TLS_SECRETS[role]} replaced" in r.stderr
    second = tls_material(api)
    assert {m.ca for m in second.values()}.isdisjoint({m.ca for m in first.values()})
    for role in ROLES:
        assert second[role].key != first[role].key
    assert checksums(api) == {tls_checksum(second)} != {tls_checksum(first)}
    ds = api.objects("daemonsets")[0]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/pxo:10.0.0"


def test_a_redeploy_waits_for_the_pods_of_the_new_certificates(api: ApplyAPI, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The old pods are still ready after a redeploy, but hold the old CA: they do not count.
    (In-process, against the same loopback server: four deploys as subprocesses take too long.)"""
    from pxo.cli import kube
    from pxo.cli.errors import CliError

    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path)))
    nodes = cluster(api, "6.18.0", "6.18.0")
    all_ready(api, nodes)
    said: list[str] = []
    kube.deploy(image=IMAGE, timeout=5, say=said.append)
    (ds,) = api.objects("daemonsets")
    assert ds["metadata"]["generation"] == 1
    # the controllers have not seen the new templates yet: their status is of generation 1
    api.set_status("daemonsets", "pxo-edge", {"desiredNumberScheduled": 2, "numberReady": 2,
                                              "updatedNumberScheduled": 2, "observedGeneration": 1})
    for name in ("pxo-collector", "pxo-cloud"):
        api.set_status("deployments", name, {"availableReplicas": 1, "updatedReplicas": 1, "replicas": 1,
                                             "observedGeneration": 1})
    with pytest.raises(CliError) as err:
        kube.deploy(image=IMAGE, timeout=0, say=said.append)
    assert api.objects("daemonsets")[0]["metadata"]["generation"] == 2  # the checksum changed the template
    assert str(err.value) == ("pxo was not ready within 0 s (edges ready 0/2 (0/2 on the new pod template); "
                              "collector 0/1, cloud 0/1)")
    # half-way: one edge on the new template, the collector rolled (its old pod still there), the cloud done
    api.set_status("daemonsets", "pxo-edge", {"desiredNumberScheduled": 2, "numberReady": 2,
                                              "updatedNumberScheduled": 1})
    api.set_status("deployments", "pxo-collector", {"availableReplicas": 2, "updatedReplicas": 1, "replicas": 2})
    api.set_status("deployments", "pxo-cloud", {"availableReplicas": 1, "updatedReplicas": 1, "replicas": 1})
    with pytest.raises(CliError) as err:
        kube.deploy(image=IMAGE, timeout=0, say=said.append)
    assert "(edges ready 1/2 (1/2 on the new pod template); collector 0/1, cloud 1/1)" in str(err.value)
    all_ready(api, nodes)
    assert kube.deploy(image=IMAGE, timeout=5, say=said.append) == 0


def test_dry_run_prints_the_manifests_and_creates_nothing(api: ApplyAPI, tmp_path: Path) -> None:
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--dry-run", "--image", IMAGE)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] != "Secret"] == \
        [(d["kind"], d["metadata"]["name"]) for d in render(IMAGE)]
    assert "PXO_IMAGE" not in r.stdout and IMAGE in r.stdout
    assert api.requests == []  # not even a read
    # the Secrets are shown, their values are not: no key, no certificate, no token
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {TOKEN_SECRET, *TLS_SECRETS.values()}
    for role in ROLES:
        assert secrets[TLS_SECRETS[role]]["type"] == "kubernetes.io/tls"
        assert secrets[TLS_SECRETS[role]]["stringData"] == {
            "ca.crt": "<generated at deploy>", "tls.crt": "<generated at deploy>",
            "tls.key": "<private key: generated at deploy, never printed>"}
    assert "PRIVATE KEY" not in r.stdout and "BEGIN" not in r.stdout and "PRIVATE KEY" not in r.stderr


def test_preflight_refusal_applies_nothing(api: ApplyAPI, tmp_path: Path) -> None:
    cluster(api, "6.18.0")
    api.denied = {"clusterroles"}
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE)
    assert r.returncode == 1
    assert "✗ you may not create the edge's ClusterRole (clusterroles)" in r.stderr
    assert "pxo: the preflight checks failed: nothing was applied" in r.stderr
    assert api.mutations() == []


def test_unreachable_api_server_fails_fast(tmp_path: Path) -> None:
    with ApplyAPI() as api:
        kubeconfig = api.kubeconfig(tmp_path)
    started = time.monotonic()
    r = cli.pxo("deploy", "--kubernetes", env={"KUBECONFIG": str(kubeconfig)})
    assert r.returncode == 1 and time.monotonic() - started < 30
    assert "the Kubernetes API server at http://127.0.0.1:" in r.stderr and "cannot be reached" in r.stderr
    assert "Traceback" not in r.stderr


def test_delete_removes_everything_and_waits(api: ApplyAPI, tmp_path: Path) -> None:
    nodes = cluster(api, "6.18.0", "6.18.0")
    all_ready(api, nodes)
    assert pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE).returncode == 0
    edge = created(api)[("DaemonSet", "pxo-edge")]
    api.linger = 1.5  # the namespace terminates for a while, as its pods stop
    started = time.monotonic()
    r = pxo(api, tmp_path, "delete", "--kubernetes")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started >= 1.5  # it waited until gone
    assert ("deleted the eBPF programs pinned on 2 nodes, Secret/pxo-cluster-token, Secret/pxo-tls-edge, "
            "Secret/pxo-tls-collector, Secret/pxo-tls-cloud, ClusterRoleBinding/pxo-edge, ClusterRole/pxo-edge, "
            "Namespace/pxo") in r.stderr
    # The edges go first (a starting edge could pin again), then the unpin pods run on their nodes,
    # and only once every one is ready does anything else go.
    mutations = api.mutations()
    since = mutations.index(("DELETE", "/apis/apps/v1/namespaces/pxo/daemonsets/pxo-edge"))
    assert mutations[since + 1:] == [
        ("POST", "/apis/apps/v1/namespaces/pxo/daemonsets"),  # pxo-unpin
        *[("DELETE", f"/api/v1/namespaces/pxo/secrets/{n}") for n in (TOKEN_SECRET, *TLS_SECRETS.values())],
        ("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/pxo-edge"),
        ("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles/pxo-edge"),
        ("DELETE", "/api/v1/namespaces/pxo")], mutations[since:]
    assert ("DELETE", "/api/v1/namespaces/pxo/secrets/pxo-tls-cloud") in mutations
    assert not api.objects("secrets")
    assert [o["kind"] for o in api.objects()] == ["Node", "Node"]
    r = pxo(api, tmp_path, "delete", "--kubernetes")
    assert r.returncode == 0 and "pxo was not deployed in this cluster" in r.stderr
    # What ran on the nodes: the edge's image and nodes, its bpffs, the loader's unpin, ready once it is gone.
    unpin = kube.unpin_daemonset(edge)
    assert unpin is not None
    pod, edge_pod_spec = unpin["spec"]["template"]["spec"], edge["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == IMAGE and c["args"] == ["python", "-m", "pxo.edge.loader", "unpin", "--root",
                                                 str(pins.PIN_ROOT), "--stay"]
    assert pod["tolerations"] == edge_pod_spec["tolerations"] == [{"operator": "Exists"}]
    assert pod["volumes"] == [{"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf", "type": "Directory"}}]
    assert c["volumeMounts"] == [{"name": "bpffs", "mountPath": "/sys/fs/bpf"}]
    assert str(pins.PIN_ROOT) in c["readinessProbe"]["exec"]["command"][-1]


def test_delete_stops_and_names_the_node_whose_pins_are_not_removed(api: ApplyAPI, tmp_path: Path) -> None:
    nodes = cluster(api, "6.18.0", "6.18.0")
    all_ready(api, nodes)
    assert pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE).returncode == 0
    api.set_status("daemonsets", "pxo-unpin", {"desiredNumberScheduled": 2, "numberReady": 1})
    stuck = edge_pod("node-2", ready=False, waiting=("CrashLoopBackOff", "back-off 10s restarting failed container"))
    stuck["metadata"]["name"] = "pxo-unpin-q8x2v"
    stuck["metadata"]["labels"] = {"app.kubernetes.io/name": "pxo-unpin"}
    api.put_pod(stuck)
    done = edge_pod("node-1")
    done["metadata"]["name"] = "pxo-unpin-a1b2c"
    done["metadata"]["labels"] = {"app.kubernetes.io/name": "pxo-unpin"}
    api.put_pod(done)
    r = pxo(api, tmp_path, "delete", "--kubernetes", "--timeout", "1")
    assert r.returncode == 1
    assert ("were not removed from every node in time (1/2 nodes): the edges are stopped, nothing else was "
            "deleted") in r.stderr
    assert "node node-2: pod pxo-unpin-q8x2v: Running: CrashLoopBackOff: back-off 10s" in r.stderr
    assert "node node-1" not in r.stderr and "pxo delete --kubernetes --keep-pins" in r.stderr
    assert ("Secret", "pxo-cluster-token") in created(api)  # nothing else went
    # Deploying again brings the edges back and takes the unpin pods away (one restarting would
    # unpin what the new edges pin).
    assert ("DaemonSet", "pxo-unpin") in created(api)
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE)
    assert r.returncode == 0, r.stderr
    assert "DaemonSet/pxo-unpin, left by an unfinished pxo delete, deleted" in r.stderr
    assert ("DaemonSet", "pxo-unpin") not in created(api) and ("DaemonSet", "pxo-edge") in created(api)
    # --keep-pins: everything else goes, the unpin DaemonSet with the namespace
    r = pxo(api, tmp_path, "delete", "--kubernetes", "--keep-pins")
    assert r.returncode == 0, r.stderr
    assert "deleted Secret/pxo-cluster-token" in r.stderr and "eBPF" not in r.stderr.split("deleted ")[-1]
    assert [o["kind"] for o in api.objects() if o["kind"] != "Pod"] == ["Node", "Node"]


def test_delete_times_out(api: ApplyAPI, tmp_path: Path) -> None:
    all_ready(api, cluster(api, "6.18.0"))
    assert pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE).returncode == 0
    api.linger = 60
    r = pxo(api, tmp_path, "delete", "--kubernetes", "--timeout", "1")
    assert r.returncode == 1
    assert "pxo: still there after 1 s: " in r.stderr and "Namespace/pxo" in r.stderr


def test_an_unschedulable_edge_says_why(api: ApplyAPI, tmp_path: Path) -> None:
    all_ready(api, cluster(api, "6.18.0"))
    api.set_status("daemonsets", "pxo-edge", {"desiredNumberScheduled": 2, "numberReady": 1,
                                              "updatedNumberScheduled": 2})
    pending = edge_pod("", ready=False)
    pending["metadata"]["name"] = "pxo-edge-x7k2p"
    pending["status"] = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes are available: 1 Insufficient memory."}]}
    api.put_pod(pending)
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE, "--timeout", "1")
    assert r.returncode == 1
    assert ("(unscheduled) pxo-edge-x7k2p: Pending: Unschedulable: 0/2 nodes are available: 1 Insufficient "
            "memory.") in r.stderr


def test_no_kubeconfig_and_no_flag_is_a_clear_error(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KUBECONFIG": ""}
    r = cli.pxo("deploy", env=env)
    assert r.returncode == 1 and "'pxo deploy --local'" in r.stderr and "'pxo deploy --kubernetes'" in r.stderr
    r = cli.pxo("deploy", "--kubernetes", env=env)
    assert r.returncode == 1 and r.stderr.startswith("pxo: cannot load the kubeconfig") and "Traceback" not in r.stderr


def test_unknown_context_is_a_clear_error(api: ApplyAPI, tmp_path: Path) -> None:
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--context", "nope")
    assert r.returncode == 1 and "pxo: cannot load the kubeconfig" in r.stderr and "nope" in r.stderr
    assert api.requests == []
