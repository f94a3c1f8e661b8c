"""deploy/kubernetes validated offline against the Kubernetes schemas, and the
security-relevant fields checked one by one. No API server runs here: what was
and was not tested against a real cluster is said in deploy/README.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from pxo.cli.kube import REDACTED, TLS_CHECKSUM, TLS_SECRETS, redacted, render, to_yaml, with_secrets
from pxo.cloud.settings import CloudSettings
from pxo.collector.main import CollectorSettings
from pxo.common.settings import setting_names
from pxo.common.tls import ROLES, generate_material
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


def deployed() -> list[dict[str, Any]]:
    """Everything `pxo deploy --kubernetes` applies: the manifests, the Secrets, the checksum annotations."""
    return with_secrets(render(IMAGE, DEPLOY), "t" * 43, generate_material())


@pytest.mark.parametrize("doc", deployed(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)  # strict: unknown fields are errors


@pytest.mark.parametrize("doc", [d for d in redacted(deployed()) if d["kind"] == "Secret"],
                         ids=lambda d: d["metadata"]["name"])
def test_dry_run_secrets_are_valid_and_redacted(doc: dict[str, Any]) -> None:
    kv.validate(doc, kv.latest_version(), strict=True)
    assert "data" not in doc and set(doc["stringData"].values()) <= {REDACTED, "<private key: generated at "
                                                                                "deploy, never printed>"}


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
                                  "/dev/kmsg", "/sys/fs/bpf"}
    for name, path in host.items():  # read-only, except the store and the pinned eBPF programs
        assert mounts[name].get("readOnly") is (None if path in ("/var/lib/pxo/edge", "/sys/fs/bpf") else True), path
    assert mounts["bpffs"]["mountPropagation"] == "Bidirectional"  # a bpffs the edge mounts outlives the pod
    env = {e["name"]: e for e in c["env"]}
    assert env["PXO_EDGE_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == health_port(c, "PXO_EDGE_")  # the plain-text health port
    assert pod["serviceAccountName"] == "pxo-edge"


def test_rbac_reads_pods_and_writes_only_events() -> None:
    (role,) = by_kind("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
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
                        assert field in setting_names(cls), f"{e['name']} is no setting of {cls.__name__}"


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


# -- TLS ----------------------------------------------------------------------------

COMPONENTS = {"edge": ("DaemonSet", "pxo-edge", "PXO_EDGE_"), "collector": ("Deployment", "pxo-collector",
                                                                           "PXO_COLLECTOR_"),
              "cloud": ("Deployment", "pxo-cloud", "PXO_CLOUD_")}


def health_port(c: dict[str, Any], prefix: str) -> int:
    env = {e["name"]: e.get("value", "") for e in c["env"]}
    host, _, port = env[prefix + "HEALTH_LISTEN"].rpartition(":")
    assert host == "0.0.0.0" and {"name": "health", "containerPort": int(port)} in c["ports"]
    return int(port)


@pytest.mark.parametrize("role", ROLES)
def test_each_component_mounts_its_own_tls_secret_read_only(role: str) -> None:
    kind, name, prefix = COMPONENTS[role]
    pod = one(kind, name)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert [s["secretName"] for s in secret_volumes.values()] == [TLS_SECRETS[role]]  # its own role's, only
    (vol,) = secret_volumes
    mode = secret_volumes[vol]["defaultMode"]
    assert mode in (0o400, 0o440), oct(mode)  # nobody else on the node, never writable
    if pod.get("securityContext", {}).get("runAsNonRoot"):  # a file of root's: readable through the group only
        assert mode == 0o440 and pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol]
    assert mount["readOnly"] is True and "subPath" not in mount
    env = {e["name"]: e for e in c["env"]}
    base = mount["mountPath"]
    assert {k: env[prefix + k].get("value") for k in ("TLS_CA", "TLS_CERT", "TLS_KEY")} == {
        "TLS_CA": f"{base}/ca.crt", "TLS_CERT": f"{base}/tls.crt", "TLS_KEY": f"{base}/tls.key"}


def test_no_key_material_outside_the_tls_secrets() -> None:
    docs = deployed()
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"] in TLS_SECRETS.values():
            continue
        text = to_yaml([d])
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, d["metadata"]["name"]
    for d in by_kind("DaemonSet") + by_kind("Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):  # the key is a file; no variable is made from a TLS Secret
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] not in TLS_SECRETS.values(), e["name"]


def test_grpc_probes_use_the_plain_health_port_not_the_tls_one() -> None:
    for role in ("edge", "collector"):
        kind, name, prefix = COMPONENTS[role]
        (c,) = one(kind, name)["spec"]["template"]["spec"]["containers"]
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        probes = [c[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in c]
        assert len(probes) >= 2
        for probe in probes:
            assert probe["grpc"]["port"] == health_port(c, prefix) != grpc_port
    (c,) = one("Deployment", "pxo-cloud")["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["port"] == "http"  # the cloud's API is HTTP: unchanged by TLS


def test_pod_templates_carry_the_certificate_checksum() -> None:
    first, second = deployed(), deployed()
    sums = []
    for docs in (first, second):
        sums.append({d["spec"]["template"]["metadata"]["annotations"][TLS_CHECKSUM]
                     for d in docs if d["kind"] in ("DaemonSet", "Deployment")})
    assert len(sums[0]) == len(sums[1]) == 1 and sums[0] != sums[1]  # new certificates: a rollout
