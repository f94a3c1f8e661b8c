"""deploy/kubernetes validated offline against the Kubernetes schemas, and the
security-relevant fields checked one by one. No API server runs here: what was
and was not tested against a real cluster is said in deploy/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from pxo.cloud.settings import CloudSettings
from pxo.collector.main import CollectorSettings
from pxo.edge.main import EdgeSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
IMAGE = "registry.example/pxo:0.1.0"


def manifests() -> list[dict[str, Any]]:
    docs = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text().replace("PXO_IMAGE", IMAGE)) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)  # strict: unknown fields are errors


def test_everything_is_in_the_pxo_namespace() -> None:
    for d in manifests():
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "pxo", d["metadata"]["name"]


def test_edge_daemonset() -> None:
    pod = one("DaemonSet", "pxo-edge")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["hostPID"] is True and c["securityContext"]["privileged"] is True
    assert {"operator": "Exists"} in pod["tolerations"]  # every node, tainted or not
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host.values()) >= {"/sys", "/sys/kernel/btf", "/sys/fs/cgroup", "/lib/modules", "/usr/src",
                                  "/dev/kmsg"}
    for name, path in host.items():  # read-only, except the store
        assert mounts[name].get("readOnly") is (None if path == "/var/lib/pxo/edge" else True), path
    env = {e["name"]: e for e in c["env"]}
    assert env["PXO_EDGE_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]
    port = c["ports"][0]["containerPort"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == port  # the gRPC health service
    assert pod["serviceAccountName"] == "pxo-edge"


def test_rbac_is_read_only_on_pods() -> None:
    (role,) = by_kind("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert not by_kind("Role")


@pytest.mark.parametrize("name", ["pxo-collector", "pxo-cloud"])
def test_servers_run_unprivileged(name: str) -> None:
    pod = one("Deployment", name)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["limits"]["memory"]
        assert c["readinessProbe"] and c["livenessProbe"]


def test_every_pxo_variable_is_a_real_setting() -> None:
    settings = {"PXO_EDGE_": EdgeSettings, "PXO_COLLECTOR_": CollectorSettings, "PXO_CLOUD_": CloudSettings}
    for d in by_kind("DaemonSet") + by_kind("Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                for prefix, cls in settings.items():
                    if e["name"].startswith(prefix):
                        field = e["name"][len(prefix):].lower()
                        assert field in cls.model_fields, f"{e['name']} is no setting of {cls.__name__}"


def test_services_reach_the_ports_the_components_listen_on() -> None:
    for svc, deploy in (("pxo-collector", "pxo-collector"), ("pxo-cloud", "pxo-cloud")):
        s = one("Service", svc)
        pod = one("Deployment", deploy)["spec"]["template"]
        assert s["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in s["spec"]["ports"]} <= names


def test_cloud_and_collector_share_the_cluster_token_secret() -> None:
    from pxo.cli.kube import TOKEN_SECRET

    refs = {}
    for name, var in (("pxo-collector", "PXO_COLLECTOR_CLUSTER_TOKEN"), ("pxo-cloud", "PXO_CLOUD_CLUSTER_TOKEN")):
        (c,) = one("Deployment", name)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert "value" not in env[var]  # never in the manifest itself
        refs[name] = env[var]["valueFrom"]["secretKeyRef"]
    assert refs["pxo-collector"] == refs["pxo-cloud"] == {"name": TOKEN_SECRET, "key": "token"}
