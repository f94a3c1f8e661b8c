"""`pxo deploy --kubernetes`: preflight checks, apply deploy/kubernetes, wait
until every node's edge is ready; `pxo delete --kubernetes` removes it again.

Talks to the API server through the official client library (its kubeconfig
loading, authentication and TLS), with plain REST paths so that every kind in
the manifests goes through one create / read / replace / delete code path.
Imported only by the deploy and delete commands: the client library is slow
to import.

    preflight   API server version; may we create namespaces and cluster roles
                (SelfSubjectAccessReview); each node's kernel (nodeInfo: 5.8 or
                newer; pxo is tested on 5.10, 6.1, 6.12 and 7.2); BTF and
                cgroup version only where node labels say (else "unknown")
    apply       the manifests in file order, PXO_IMAGE replaced; first the Secret
                with the cluster token (kept when it exists: the cloud and
                collector keep trusting each other across redeploys) and one
                kubernetes.io/tls Secret per component (pxo-tls-edge, -collector,
                -cloud: ca.crt, tls.crt, tls.key), made new on every deploy from a
                new cluster CA (common/tls.py, in memory: no key touches the disk).
                The pod templates carry the certificates' checksum, so replacing
                the Secrets rolls every pod onto the new ones (rotation).
    wait        DaemonSet pxo-edge ready on every node it should run on (naming
                each node whose edge is not ready, and why), Deployments
                pxo-collector and pxo-cloud available; only pods of the new
                template count (observedGeneration, updated counts: a redeploy
                rolls every pod onto the new certificates); --timeout, never forever
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pxo.cli.errors import CliError
from pxo.common.kubeconfig import kubeconfig_files
from pxo.common.tls import ROLES, TlsMaterial, generate_material

NAMESPACE = "pxo"
TOKEN_SECRET = "pxo-cluster-token"  # key "token": PXO_COLLECTOR_/PXO_CLOUD_CLUSTER_TOKEN (secretKeyRef)
EDGE = "pxo-edge"
SERVERS = ("pxo-collector", "pxo-cloud")
UNPIN = "pxo-unpin"  # the DaemonSet `pxo delete --kubernetes` runs to remove the edges' pinned eBPF programs
PIN_ROOT = "/sys/fs/bpf/pxo"  # where the edge pins them (edge/pins.py PIN_ROOT) under its bpffs hostPath
MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
# The BPF ring buffer every pxo program writes to. What each kernel's tracepoints pass is read
# from its BTF on the node, not guessed from its version (docs/kernels.md).
MIN_KERNEL = (5, 8)
REQUEST_TIMEOUT = 10.0  # seconds per API call: a dead server never hangs the command

# kind -> (API group/version prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
}
# Kept as they are when they exist: a PVC's spec is immutable, and a new token
# would cut the cloud off its collector until both restart. The TLS Secrets are
# replaced on every deploy: that is the rotation.
KEEP_EXISTING = (("PersistentVolumeClaim", "pxo-cloud"), ("Secret", TOKEN_SECRET))
TLS_SECRETS = {role: f"pxo-tls-{role}" for role in ROLES}  # mounted read-only at /etc/pxo/tls
TLS_CHECKSUM = "pxo.dev/tls-checksum"  # on the pod templates: new certificates, new pods
REDACTED = "<generated at deploy>"
REDACTED_KEY = "<private key: generated at deploy, never printed>"

Say = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the manifests ---------------------------------------------------------------


def render(image: str, directory: Path = MANIFESTS) -> list[dict[str, Any]]:
    """The manifests in file order, PXO_IMAGE replaced by ``image``."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CliError(f"no manifests in {directory}: give --manifests DIR (deploy/kubernetes of pxo's source)")
    docs: list[dict[str, Any]] = []
    for f in files:
        docs += [d for d in yaml.safe_load_all(f.read_text().replace("PXO_IMAGE", image)) if d]
    for d in docs:
        if d.get("kind") not in KINDS:
            raise CliError(f"{d.get('kind')!r} in the manifests: pxo deploy does not know how to apply it")
    return docs


def token_secret(token: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": TOKEN_SECRET, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "pxo"}},
            "stringData": {"token": token}}


def tls_secret(role: str, m: TlsMaterial) -> dict[str, Any]:
    """A component's certificate, its key and the cluster CA, as the kubernetes.io/tls Secret it mounts."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": TLS_SECRETS[role], "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/part-of": "pxo", "app.kubernetes.io/component": role}},
            "data": {k: base64.b64encode(v).decode() for k, v in
                     (("ca.crt", m.ca), ("tls.crt", m.cert), ("tls.key", m.key))}}


def tls_checksum(material: dict[str, TlsMaterial]) -> str:
    """Names one generation of certificates (the public parts: a new CA every deploy)."""
    h = hashlib.sha256()
    for role in sorted(material):
        h.update(material[role].ca + material[role].cert)
    return h.hexdigest()[:32]


def with_secrets(docs: list[dict[str, Any]], token: str, material: dict[str, TlsMaterial]) -> list[dict[str, Any]]:
    """The Secrets right after the Namespace (before anything that references them), and the
    certificates' checksum on every pod template (so that new certificates roll the pods)."""
    out = copy.deepcopy(docs)
    checksum = tls_checksum(material)
    for d in out:
        if d["kind"] in ("DaemonSet", "Deployment"):
            meta = d["spec"]["template"].setdefault("metadata", {})
            meta["annotations"] = {**(meta.get("annotations") or {}), TLS_CHECKSUM: checksum}
    at = next((i + 1 for i, d in enumerate(out) if d["kind"] == "Namespace"), 0)
    return [*out[:at], token_secret(token), *(tls_secret(r, material[r]) for r in ROLES), *out[at:]]


def redacted(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``docs`` fit to print: every Secret's values replaced by a placeholder (no key, no token)."""
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == "Secret":
            values = {**(d.pop("data", None) or {}), **(d.pop("stringData", None) or {})}
            d["stringData"] = {k: REDACTED_KEY if k.endswith(".key") else REDACTED for k in values}
        elif d["kind"] in ("DaemonSet", "Deployment"):
            annotations = d["spec"]["template"].get("metadata", {}).get("annotations") or {}
            if TLS_CHECKSUM in annotations:
                annotations[TLS_CHECKSUM] = "<computed at deploy>"
    return out


def to_yaml(docs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False, default_flow_style=False)


def object_path(doc: dict[str, Any], *, named: bool = True) -> str:
    prefix, plural, namespaced = KINDS[doc["kind"]]
    meta = doc["metadata"]
    base = f"{prefix}/namespaces/{meta.get('namespace', NAMESPACE)}/{plural}" if namespaced else f"{prefix}/{plural}"
    return f"{base}/{meta['name']}" if named else base


def describe(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# -- the API server --------------------------------------------------------------


class Kube:
    """REST calls through the client library's ApiClient (auth, TLS, proxies from the kubeconfig)."""

    def __init__(self, *, context: str | None = None, timeout: float = REQUEST_TIMEOUT) -> None:
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        try:
            # KUBECONFIG as it is now (the library reads it once, at its import)
            files = os.pathsep.join(str(p) for p in kubeconfig_files())
            self.client = config.new_client_from_config(config_file=files or None, context=context)
        except (ConfigException, OSError) as exc:
            raise CliError(f"cannot load the kubeconfig: {exc}") from exc
        self.host = self.client.configuration.host
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body); CliError when the server cannot be reached."""
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        _m, url, headers, data, _p = self.client.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"])
        try:
            resp = self.client.call_api(method, url, header_params=headers, body=data,
                                        _request_timeout=(self.timeout, self.timeout))
            status, raw = resp.status, resp.read()
        except ApiException as exc:
            status, raw = exc.status or 0, (exc.body or b"")
        except Exception as exc:  # urllib3 errors: refused, timed out, TLS
            raise CliError(f"the Kubernetes API server at {self.host} cannot be reached: "
                           f"{_short(exc)}") from exc
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            parsed = {"message": (raw or b"").decode(errors="replace")[:200]}
        return status, parsed if isinstance(parsed, dict) else {}

    def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any] | None:
        status, body = self.call("GET", path, query=query)
        if status == 404:
            return None
        _check(status, body, f"GET {path}")
        return body


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check(status: int, body: dict[str, Any], what: str) -> None:
    if 200 <= status < 300:
        return
    msg = body.get("message") or body.get("reason") or "no message"
    if status in (401, 403):
        raise CliError(f"the API server refused {what} ({status}): {msg}")
    raise CliError(f"{what} failed ({status}): {msg}")


# -- preflight -------------------------------------------------------------------


def kernel_version(text: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass
class Preflight:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def check(self, good: bool, sentence: str, *, fatal: bool = False, say: Say = _stderr) -> None:
        self.lines.append(f"{'✓' if good else '✗'} {sentence}")
        say(self.lines[-1])
        if not good and fatal:
            self.ok = False


def _may(kube: Kube, verb: str, resource: str, group: str = "", namespace: str = "") -> bool | None:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "group": group,
                                              "namespace": namespace}}}
    status, body = kube.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    if not 200 <= status < 300:
        return None
    return bool(body.get("status", {}).get("allowed"))


def preflight(kube: Kube, *, say: Say = _stderr) -> Preflight:
    pf = Preflight()
    status, version = kube.call("GET", "/version")
    if status != 200:
        pf.check(False, f"the API server at {kube.host} answers /version with {status}", fatal=True, say=say)
        return pf
    pf.check(True, f"API server at {kube.host} is reachable (Kubernetes {version.get('gitVersion', '?')})", say=say)

    for verb, resource, group, what in (("create", "namespaces", "", "the namespace"),
                                        ("create", "clusterroles", "rbac.authorization.k8s.io",
                                         "the edge's ClusterRole"),
                                        ("create", "daemonsets", "apps", "the edge DaemonSet")):
        allowed = _may(kube, verb, resource, group, NAMESPACE if resource == "daemonsets" else "")
        if allowed is None:
            pf.check(True, f"could not ask whether you may create {what} (no SelfSubjectAccessReview); "
                     "trying anyway", say=say)
        else:
            pf.check(allowed, f"you {'may' if allowed else 'may not'} create {what} ({resource})",
                     fatal=True, say=say)

    nodes = (kube.get("/api/v1/nodes") or {}).get("items", [])
    if not nodes:
        pf.check(False, "the cluster has no nodes yet: no edge can run", say=say)
    for node in nodes:
        name = node["metadata"]["name"]
        info = node.get("status", {}).get("nodeInfo", {})
        kernel = info.get("kernelVersion", "")
        kv = kernel_version(kernel)
        labels = node["metadata"].get("labels") or {}
        extra = f"; {_btf_cgroup(labels)}"
        if kv is None:
            pf.check(False, f"node {name}: kernel version unknown ({kernel or 'not reported'}){extra}", say=say)
        elif kv < MIN_KERNEL:
            pf.check(False, f"node {name}: kernel {kernel} is older than 5.8 (no BPF ring buffer): no eBPF there, "
                     f"the edge runs degraded on the kernel log and cgroupfs{extra}", say=say)
        else:
            pf.check(True, f"node {name}: kernel {kernel}{extra}", say=say)
    return pf


def _btf_cgroup(labels: dict[str, str]) -> str:
    """What node labels (node-feature-discovery) tell; the API itself says nothing about either."""
    btf = labels.get("feature.node.kubernetes.io/kernel-config.DEBUG_INFO_BTF")
    cgroup = labels.get("feature.node.kubernetes.io/kernel-cgroup.version") or labels.get("pxo.dev/cgroup-version")
    return (f"BTF {'yes' if btf == 'true' else 'no' if btf else 'unknown'}, "
            f"cgroup {'v' + cgroup.lstrip('v') if cgroup else 'unknown'}")


# -- apply -----------------------------------------------------------------------


def apply(kube: Kube, docs: list[dict[str, Any]], *, say: Say = _stderr) -> None:
    for doc in docs:
        path = object_path(doc)
        status, body = kube.call("POST", object_path(doc, named=False), doc)
        if status == 409:  # exists
            if (doc["kind"], doc["metadata"]["name"]) in KEEP_EXISTING:
                say(f"  {describe(doc)} exists, kept")
                continue
            current = kube.get(path) or {}
            new = json.loads(json.dumps(doc))
            new["metadata"]["resourceVersion"] = current.get("metadata", {}).get("resourceVersion", "")
            if doc["kind"] == "Service":  # allocated values are immutable
                for k in ("clusterIP", "clusterIPs"):
                    if k in current.get("spec", {}):
                        new["spec"][k] = current["spec"][k]
            status, body = kube.call("PUT", path, new)
            _check(status, body, f"replacing {describe(doc)}")
            say(f"  {describe(doc)} replaced")
            continue
        _check(status, body, f"creating {describe(doc)}")
        say(f"  {describe(doc)} created")


def delete_object(kube: Kube, path: str, what: str) -> bool:
    """Ask for the object at ``path`` to go (its dependents after it); False when it was not there."""
    status, body = kube.call("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1",
                                              "propagationPolicy": "Background"})
    if status == 404:
        return False
    _check(status, body, f"deleting {what}")
    return True


def existing_token(kube: Kube) -> str | None:
    import base64

    secret = kube.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{TOKEN_SECRET}")
    if not secret:
        return None
    raw = (secret.get("data") or {}).get("token")
    return base64.b64decode(raw).decode() if raw else (secret.get("stringData") or {}).get("token")


# -- wait ------------------------------------------------------------------------


def _ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def why_not_ready(pod: dict[str, Any]) -> str:
    """One line: the phase, the waiting reason, the last termination's message."""
    st = pod.get("status", {})
    parts: list[str] = []
    for c in st.get("containerStatuses") or []:
        state, last = c.get("state") or {}, (c.get("lastState") or {}).get("terminated")
        if "waiting" in state:
            w = state["waiting"]
            parts.append(w.get("reason", "waiting") + (f": {w['message']}" if w.get("message") else ""))
        elif "terminated" in state:
            t = state["terminated"]
            parts.append(f"terminated ({t.get('reason', '')}, exit {t.get('exitCode')})")
        elif "running" in state and not c.get("ready"):
            parts.append("running, not ready yet (probes)")
        if last:
            msg = (last.get("message") or "").strip().splitlines()
            parts.append(f"last exit {last.get('exitCode')} ({last.get('reason', '')})"
                         + (f": {msg[-1]}" if msg else ""))
        if c.get("restartCount"):
            parts.append(f"{c['restartCount']} restarts")
    if not parts:
        for cond in st.get("conditions") or []:
            if cond.get("status") == "False" and cond.get("message"):
                parts.append(f"{cond.get('reason', cond.get('type'))}: {cond['message']}")
    return f"{st.get('phase', 'Unknown')}: " + ("; ".join(parts) or "no detail yet")


@dataclass
class Rollout:
    desired: int = 0
    ready: int = 0  # ready edges of the current pod template
    updated: int = 0  # edges of the current pod template
    servers: dict[str, str] = field(default_factory=dict)  # name -> "1/1"
    bad_nodes: dict[str, str] = field(default_factory=dict)  # node -> why

    @property
    def done(self) -> bool:
        return (self.desired > 0 and self.ready >= self.desired
                and all(_avail_done(v) for v in self.servers.values()))

    def line(self) -> str:
        servers = ", ".join(f"{k.removeprefix('pxo-')} {v}" for k, v in self.servers.items())
        rolling = f" ({self.updated}/{self.desired} on the new pod template)" if self.updated < self.desired else ""
        return f"edges ready {self.ready}/{self.desired}{rolling}; {servers}"


def _avail_done(text: str) -> bool:
    have, _, want = text.partition("/")
    return have == want and want != "0"


def _observed(obj: dict[str, Any]) -> bool:
    """Whether the controller has seen the latest spec (else its status counts still describe the old one)."""
    gen = (obj.get("metadata") or {}).get("generation")
    return gen is None or int((obj.get("status") or {}).get("observedGeneration") or 0) >= int(gen)


def rollout(kube: Kube) -> Rollout:
    r = Rollout()
    ds = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{EDGE}") or {}
    st = ds.get("status") or {}
    r.desired = int(st.get("desiredNumberScheduled") or 0)
    # as `kubectl rollout status`: pods of the previous template (old certificates) do not count
    r.updated = int(st.get("updatedNumberScheduled") or 0) if _observed(ds) else 0
    r.ready = min(int(st.get("numberReady") or 0), r.updated)
    for name in SERVERS:
        d = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}") or {}
        want = int((d.get("spec") or {}).get("replicas", 1))
        dst = d.get("status") or {}
        available, updated = int(dst.get("availableReplicas") or 0), int(dst.get("updatedReplicas") or 0)
        if not _observed(d):
            updated = 0
        finished = updated >= want and int(dst.get("replicas") or updated) <= updated  # no old pod left
        r.servers[name] = f"{available if finished else min(available, updated, max(want - 1, 0))}/{want}"
    if r.ready < r.desired or r.desired == 0:
        r.bad_nodes = nodes_not_ready(kube, EDGE, "edge")
    return r


def nodes_not_ready(kube: Kube, app: str, what: str) -> dict[str, str]:
    """node -> why the pod of DaemonSet ``app`` there is not ready (or that there is none yet)."""
    out: dict[str, str] = {}
    pods = (kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods",
                     {"labelSelector": f"app.kubernetes.io/name={app}"}) or {}).get("items", [])
    by_node = {p.get("spec", {}).get("nodeName", ""): p for p in pods}
    nodes = [n["metadata"]["name"] for n in (kube.get("/api/v1/nodes") or {}).get("items", [])]
    for node in nodes:
        pod = by_node.get(node)
        if pod is None:
            out[node] = f"no {what} pod on this node yet"
        elif not _ready(pod):
            out[node] = f"pod {pod['metadata']['name']}: {why_not_ready(pod)}"
    unscheduled = by_node.get("")
    if unscheduled is not None:
        out[f"(unscheduled) {unscheduled['metadata']['name']}"] = why_not_ready(unscheduled)
    return out


def wait(kube: Kube, *, timeout: float, interval: float = 2.0, say: Say = _stderr,
         clock: Callable[[], float] = time.monotonic) -> Rollout:
    end = clock() + timeout
    last = ""
    while True:
        r = rollout(kube)
        line = r.line() + "".join(f"\n    {n}: {why}" for n, why in sorted(r.bad_nodes.items()))
        if line != last:
            say(f"  {line}")
            last = line
        if r.done:
            return r
        if clock() >= end:
            detail = "\n".join(f"  node {n}: {why}" for n, why in sorted(r.bad_nodes.items()))
            servers = [f"  {k}: {v} available" for k, v in r.servers.items() if not _avail_done(v)]
            raise CliError(f"pxo was not ready within {timeout:g} s ({r.line()})",
                           detail="\n".join([detail, *servers]).strip("\n")
                           + f"\n  look closer: kubectl -n {NAMESPACE} get pods -o wide; "
                             f"kubectl -n {NAMESPACE} logs ds/{EDGE}")
        time.sleep(max(0.0, min(interval, end - clock())))


# -- the commands ----------------------------------------------------------------


def deploy(*, image: str, timeout: float, context: str | None = None, manifests: Path = MANIFESTS,
           dry_run: bool = False, say: Say = _stderr) -> int:
    docs = render(image, manifests)
    if dry_run:
        print("# pxo deploy --kubernetes --dry-run: nothing is applied. The Secret "
              f"{TOKEN_SECRET} gets a generated token, and {', '.join(TLS_SECRETS.values())} a new cluster CA "
              "and certificates (redacted here: no key is ever printed).", flush=True)
        print(to_yaml(redacted(with_secrets(docs, REDACTED, generate_material()))), end="", flush=True)
        return 0
    kube = Kube(context=context)
    say("preflight checks:")
    pf = preflight(kube, say=say)
    if not pf.ok:
        raise CliError("the preflight checks failed: nothing was applied")
    token = existing_token(kube) if kube.get(f"/api/v1/namespaces/{NAMESPACE}") else None
    # A new cluster CA on every deploy (rotation), in memory only: the keys go to the Secrets.
    material = generate_material()
    objects = with_secrets(docs, token or secrets.token_urlsafe(32), material)
    say(f"applying {len(objects)} objects (image {image}; a new cluster CA for mutual TLS) ...")
    apply(kube, objects, say=say)
    # A `pxo delete --kubernetes` that stopped before the end may have left its unpin pods: one that
    # restarted would remove what the new edges pin.
    if delete_object(kube, f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{UNPIN}", f"DaemonSet/{UNPIN}"):
        say(f"  DaemonSet/{UNPIN}, left by an unfinished pxo delete, deleted")
    say(f"waiting up to {timeout:g} s for the edges on every node and the collector and cloud ...")
    r = wait(kube, timeout=timeout, say=say)
    say(f"pxo is running: {r.ready} edges, collector and cloud available in namespace {NAMESPACE}")
    say(f"  API: kubectl -n {NAMESPACE} port-forward svc/pxo-cloud 8700:8700")
    say(f"  admin API key: kubectl -n {NAMESPACE} exec deploy/pxo-cloud -- python -m pxo.cloud bootstrap "
        "--data-dir /var/lib/pxo/cloud")
    say("  then: pxo auth login --url http://127.0.0.1:8700")
    say("  to query this cluster from another pxo cloud (pxo clusters add), fetch the cloud's certificate "
        "and the token (they change with every deploy):")
    for line in fetch_commands(context):
        say(f"    {line}")
    return 0


def fetch_commands(context: str | None = None) -> list[str]:
    """Shell lines that copy the cloud role's certificate, key and the cluster CA out of the
    Secret (private files), for ``pxo clusters add ... --tls-ca --tls-cert --tls-key``."""
    kubectl = f"kubectl{f' --context {context}' if context else ''} -n {NAMESPACE} get secret"
    get = f"{kubectl} {TLS_SECRETS['cloud']} -o jsonpath="
    return [f"(umask 077; {get}'{{.data.ca\\.crt}}' | base64 -d > pxo-ca.crt; "
            f"{get}'{{.data.tls\\.crt}}' | base64 -d > pxo-cloud.crt; "
            f"{get}'{{.data.tls\\.key}}' | base64 -d > pxo-cloud.key; "
            f"{kubectl} {TOKEN_SECRET} -o jsonpath='{{.data.token}}' | base64 -d > pxo-token)",
            "pxo clusters add NAME HOST:50700 --tls-ca pxo-ca.crt --tls-cert pxo-cloud.crt "
            "--tls-key pxo-cloud.key --token-stdin < pxo-token"]


def unpin_daemonset(edge: dict[str, Any]) -> dict[str, Any] | None:
    """The DaemonSet that removes what the edges pinned in their nodes' bpffs (their eBPF programs
    stay attached otherwise, capturing into ring buffers nobody reads, until each node reboots):
    the edge's image and nodes (tolerations, selectors, priority), its bpffs hostPath, and the
    edge's loader, which unpins and then stays; a pod is ready once its node has no pins left.
    None when the edge has no bpffs of its node's mounted."""
    pod = edge["spec"]["template"]["spec"]
    mount = next((m for m in pod["containers"][0].get("volumeMounts", []) if m["mountPath"] == "/sys/fs/bpf"), None)
    volume = next((v for v in pod.get("volumes", []) if mount and v["name"] == mount["name"]), None)
    if volume is None or "hostPath" not in volume:
        return None  # this edge pins nothing on its node
    labels = {"app.kubernetes.io/name": UNPIN, "app.kubernetes.io/part-of": "pxo",
              "app.kubernetes.io/component": "unpin"}
    keep = ("serviceAccountName", "priorityClassName", "tolerations", "nodeSelector", "affinity")
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": UNPIN, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": UNPIN}},
            "template": {"metadata": {"labels": labels}, "spec": {
                **{k: pod[k] for k in keep if k in pod},
                "terminationGracePeriodSeconds": 5,
                "containers": [{
                    "name": "unpin", "image": pod["containers"][0]["image"],
                    "args": ["python", "-m", "pxo.edge.loader", "unpin", "--root", PIN_ROOT, "--stay"],
                    "securityContext": {"privileged": True, "runAsUser": 0},
                    "readinessProbe": {"exec": {"command": [
                        "python", "-c", f"import os, sys; sys.exit(os.path.exists({PIN_ROOT!r}))"]},
                        "periodSeconds": 2},
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "volumeMounts": [{"name": volume["name"], "mountPath": "/sys/fs/bpf"}],
                }],
                "volumes": [volume],
            }},
        },
    }


def unpin(kube: Kube, *, end: float, say: Say = _stderr) -> int:
    """Remove the edges' pinned programs from every node they ran on (unpin_daemonset): the edges
    first (a starting edge could pin again), then the unpin pods, until each is ready; returns
    how many nodes. Nothing is left half-done silently: a node that does not get there is named."""
    ds_path = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"
    edge = kube.get(f"{ds_path}/{EDGE}")
    if edge is not None:
        doc = unpin_daemonset(edge)
        if doc is None:
            say(f"  DaemonSet/{EDGE} mounts no bpffs of its nodes: nothing of it is pinned there")
            return 0
        if delete_object(kube, f"{ds_path}/{EDGE}", f"DaemonSet/{EDGE}"):
            say(f"  deleting DaemonSet/{EDGE} ...")
        say(f"  removing the edges' pinned eBPF programs from their nodes (DaemonSet/{UNPIN}) ...")
        apply(kube, [doc], say=say)
    elif kube.get(f"{ds_path}/{UNPIN}") is None:  # neither: nothing of pxo's runs on the nodes
        return 0
    last = ""
    while True:
        ds = kube.get(f"{ds_path}/{UNPIN}") or {}
        st = ds.get("status") or {}
        desired, ready = int(st.get("desiredNumberScheduled") or 0), int(st.get("numberReady") or 0)
        if ds.get("status") is not None and _observed(ds) and ready >= desired:
            return desired
        bad = nodes_not_ready(kube, UNPIN, "unpin") if ds.get("status") is not None else {}
        line = f"nodes unpinned {ready}/{desired}" + "".join(f"\n    {n}: {why}" for n, why in sorted(bad.items()))
        if line != last:
            say(f"  {line}")
            last = line
        if time.monotonic() >= end:
            detail = "\n".join(f"  node {n}: {why}" for n, why in sorted(bad.items()))
            raise CliError(
                f"the edges' eBPF programs were not removed from every node in time ({ready}/{desired} nodes): "
                "the edges are stopped, nothing else was deleted",
                detail=(detail + "\n" if detail else "")
                + f"  look closer: kubectl -n {NAMESPACE} get pods -l app.kubernetes.io/name={UNPIN} -o wide\n"
                  "  to delete pxo anyway, leaving the programs pinned until each node reboots: "
                  "pxo delete --kubernetes --keep-pins")
        time.sleep(0.5)


def delete(*, timeout: float, context: str | None = None, manifests: Path = MANIFESTS, keep_pins: bool = False,
           say: Say = _stderr) -> list[str]:
    """Remove the edges' pinned programs from the nodes (unless ``keep_pins``), then delete the
    namespace (everything in it) and the cluster-scoped objects; wait until gone."""
    kube = Kube(context=context)
    end = time.monotonic() + timeout
    gone: list[str] = []
    if not keep_pins and (nodes := unpin(kube, end=end, say=say)):
        gone.append(f"the eBPF programs pinned on {nodes} node{'s' if nodes != 1 else ''}")
    # The Secrets first and by name (certificate keys, the token): gone even while the namespace
    # still terminates; then the namespace (everything else in it) and the cluster-scoped objects.
    secret_docs = [{"kind": "Secret", "metadata": {"name": n, "namespace": NAMESPACE}}
                   for n in (TOKEN_SECRET, *TLS_SECRETS.values())]
    cluster_docs = [d for d in render("x", manifests) if not KINDS[d["kind"]][2]]  # Namespace, ClusterRole(Binding)
    docs = [*cluster_docs, *reversed(secret_docs)]  # deleted last to first
    for doc in reversed(docs):
        if not delete_object(kube, object_path(doc), describe(doc)):
            continue
        say(f"  deleting {describe(doc)} ...")
        gone.append(describe(doc))
    waiting = [d for d in docs if describe(d) in gone]
    while waiting:
        waiting = [d for d in waiting if kube.get(object_path(d)) is not None]
        if not waiting:
            break
        if time.monotonic() >= end:
            raise CliError(f"still there after {timeout:g} s: {', '.join(describe(d) for d in waiting)}",
                           detail="  a namespace waits for its pods to stop; look: kubectl get ns pxo -o yaml")
        time.sleep(0.5)
    return gone
