"""`pxo deploy --kubernetes`: preflight checks, apply deploy/kubernetes, wait
until every node's edge is ready; `pxo delete --kubernetes` removes it again.

Talks to the API server through the official client library (its kubeconfig
loading, authentication and TLS), with plain REST paths so that every kind in
the manifests goes through one create / read / replace / delete code path.
Imported only by the deploy and delete commands: the client library is slow
to import.

    preflight   API server version; may we create namespaces and cluster roles
                (SelfSubjectAccessReview); each node's kernel (nodeInfo); BTF and
                cgroup version only where node labels say (else "unknown")
    apply       the manifests in file order, PXO_IMAGE replaced; the Secret with
                the cluster token first (kept when it exists: the cloud and
                collector keep trusting each other across redeploys)
    wait        DaemonSet pxo-edge ready on every node it should run on (naming
                each node whose edge is not ready, and why), Deployments
                pxo-collector and pxo-cloud available; --timeout, never forever
"""

from __future__ import annotations

import json
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

NAMESPACE = "pxo"
TOKEN_SECRET = "pxo-cluster-token"  # key "token": PXO_COLLECTOR_/PXO_CLOUD_CLUSTER_TOKEN (secretKeyRef)
EDGE = "pxo-edge"
SERVERS = ("pxo-collector", "pxo-cloud")
MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OOM_KERNEL = (6, 9)  # oom:mark_victim
EXIT_KERNEL = (6, 16)  # process_exits
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
# would cut the cloud off its collector until both restart.
KEEP_EXISTING = ("PersistentVolumeClaim", "Secret")

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


def with_secret(docs: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    """The Secret right after the Namespace (before anything that references it)."""
    at = next((i + 1 for i, d in enumerate(docs) if d["kind"] == "Namespace"), 0)
    return [*docs[:at], token_secret(token), *docs[at:]]


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
            self.client = config.new_client_from_config(context=context)
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
        elif kv < OOM_KERNEL:
            pf.check(False, f"node {name}: kernel {kernel} is older than 6.9: no OOM eBPF there, the edge "
                     f"runs degraded on the kernel log{extra}", say=say)
        elif kv < EXIT_KERNEL:
            pf.check(True, f"node {name}: kernel {kernel} (OOM eBPF ok; process_exits needs 6.16){extra}", say=say)
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
            if doc["kind"] in KEEP_EXISTING:
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
    ready: int = 0
    servers: dict[str, str] = field(default_factory=dict)  # name -> "1/1"
    bad_nodes: dict[str, str] = field(default_factory=dict)  # node -> why

    @property
    def done(self) -> bool:
        return (self.desired > 0 and self.ready >= self.desired
                and all(_avail_done(v) for v in self.servers.values()))

    def line(self) -> str:
        servers = ", ".join(f"{k.removeprefix('pxo-')} {v}" for k, v in self.servers.items())
        return f"edges ready {self.ready}/{self.desired}; {servers}"


def _avail_done(text: str) -> bool:
    have, _, want = text.partition("/")
    return have == want and want != "0"


def rollout(kube: Kube) -> Rollout:
    r = Rollout()
    ds = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/{EDGE}") or {}
    st = ds.get("status") or {}
    r.desired, r.ready = int(st.get("desiredNumberScheduled") or 0), int(st.get("numberReady") or 0)
    for name in SERVERS:
        d = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}") or {}
        want = int((d.get("spec") or {}).get("replicas", 1))
        r.servers[name] = f"{int((d.get('status') or {}).get('availableReplicas') or 0)}/{want}"
    if r.ready < r.desired or r.desired == 0:
        pods = (kube.get(f"/api/v1/namespaces/{NAMESPACE}/pods",
                         {"labelSelector": f"app.kubernetes.io/name={EDGE}"}) or {}).get("items", [])
        by_node = {p.get("spec", {}).get("nodeName", ""): p for p in pods}
        nodes = [n["metadata"]["name"] for n in (kube.get("/api/v1/nodes") or {}).get("items", [])]
        for node in nodes:
            pod = by_node.get(node)
            if pod is None:
                r.bad_nodes[node] = "no edge pod on this node yet"
            elif not _ready(pod):
                r.bad_nodes[node] = f"pod {pod['metadata']['name']}: {why_not_ready(pod)}"
        unscheduled = by_node.get("")
        if unscheduled is not None:
            r.bad_nodes[f"(unscheduled) {unscheduled['metadata']['name']}"] = why_not_ready(unscheduled)
    return r


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
              f"{TOKEN_SECRET} gets a generated token.", flush=True)
        print(to_yaml(with_secret(docs, "<generated at deploy>")), end="", flush=True)
        return 0
    kube = Kube(context=context)
    say("preflight checks:")
    pf = preflight(kube, say=say)
    if not pf.ok:
        raise CliError("the preflight checks failed: nothing was applied")
    token = existing_token(kube) if kube.get(f"/api/v1/namespaces/{NAMESPACE}") else None
    say(f"applying {len(docs) + 1} objects (image {image}) ...")
    apply(kube, with_secret(docs, token or secrets.token_urlsafe(32)), say=say)
    say(f"waiting up to {timeout:g} s for the edges on every node and the collector and cloud ...")
    r = wait(kube, timeout=timeout, say=say)
    say(f"pxo is running: {r.ready} edges, collector and cloud available in namespace {NAMESPACE}")
    say(f"  API: kubectl -n {NAMESPACE} port-forward svc/pxo-cloud 8700:8700")
    say(f"  admin API key: kubectl -n {NAMESPACE} exec deploy/pxo-cloud -- python -m pxo.cloud bootstrap "
        "--data-dir /var/lib/pxo/cloud")
    say("  then: pxo auth login --url http://127.0.0.1:8700")
    return 0


def delete(*, timeout: float, context: str | None = None, manifests: Path = MANIFESTS,
           say: Say = _stderr) -> list[str]:
    """Delete the namespace (everything in it) and the cluster-scoped objects; wait until gone."""
    kube = Kube(context=context)
    docs = [d for d in render("x", manifests) if not KINDS[d["kind"]][2]]  # Namespace, ClusterRole(Binding)
    gone: list[str] = []
    for doc in reversed(docs):
        status, body = kube.call("DELETE", object_path(doc), {"kind": "DeleteOptions", "apiVersion": "v1",
                                                              "propagationPolicy": "Background"})
        if status == 404:
            continue
        _check(status, body, f"deleting {describe(doc)}")
        say(f"  deleting {describe(doc)} ...")
        gone.append(describe(doc))
    end = time.monotonic() + timeout
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
