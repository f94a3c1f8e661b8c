"""A real Kubernetes API server for deploy tests, on loopback: objects by REST path.

It speaks the part of the API `pxo deploy --kubernetes` uses: ``GET /version``,
``POST .../selfsubjectaccessreviews`` (allowed unless a test says not), nodes,
and create (POST, 409 when it exists, 404 when its namespace does not), get,
replace (PUT, 409 on a stale resourceVersion) and delete of any object under
``/api/v1`` or ``/apis/<group>/<version>``, cluster-scoped or namespaced;
lists take a ``labelSelector`` (``k=v,...``). Secrets are kept as the real
server keeps them: ``stringData`` merged into ``data`` (base64) and never
stored, ``data`` that is not base64 refused (400), a ``kubernetes.io/tls``
Secret without ``tls.crt`` and ``tls.key`` refused (422 Invalid), and the type
immutable on replace (422). Deleting a namespace deletes what is in it; ``linger`` keeps deleted objects visible (with a
deletionTimestamp) for a while, as a terminating namespace is. Bearer tokens
are checked.

Objects with a ``spec`` get ``metadata.generation`` (1, then +1 whenever a
replace changes the spec), as the real server does. A test plays the
controllers: ``set_status(plural, name, status)`` sets what a DaemonSet or
Deployment reports (``observedGeneration`` is the object's current generation
unless the status says otherwise: the controller has seen it), ``put(path,
obj)`` puts a node or pod.

    with ApplyAPI() as api:
        api.add_node("node-1", kernel="6.12.0")
        ... KUBECONFIG=api.kubeconfig(tmp_path) pxo deploy --kubernetes ...
        api.objects("daemonsets")
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.helpers.loopback import JsonHandler, LoopbackHTTP, write_kubeconfig

_PATH = re.compile(r"^(?P<gv>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)"
                   r"(?:/(?P<name>[^/]+))?$")
Key = tuple[str, str, str, str]  # (group/version, namespace or "", plural, name)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def node(name: str, *, kernel: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "status": {"nodeInfo": {"kernelVersion": kernel, "osImage": "Debian GNU/Linux 13",
                                    "containerRuntimeVersion": "containerd://2.0.0", "kubeletVersion": "v1.33.0",
                                    "architecture": "amd64", "operatingSystem": "linux"}}}


def edge_pod(node_name: str, *, ready: bool = True, waiting: tuple[str, str] | None = None,
             last_terminated: tuple[int, str, str] | None = None, restarts: int = 0) -> dict[str, Any]:
    """An edge pod as the DaemonSet controller and the kubelet report it.

    ``waiting`` is (reason, message), ``last_terminated`` (exit code, reason, message)."""
    state: dict[str, Any] = ({"waiting": {"reason": waiting[0], "message": waiting[1]}} if waiting
                             else {"running": {"startedAt": "2025-01-01T00:00:00Z"}})
    cs: dict[str, Any] = {"name": "edge", "image": "pxo:test", "imageID": "", "ready": ready,
                          "restartCount": restarts, "state": state}
    if last_terminated:
        cs["lastState"] = {"terminated": {"exitCode": last_terminated[0], "reason": last_terminated[1],
                                          "message": last_terminated[2]}}
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": f"pxo-edge-{node_name}", "namespace": "pxo",
                         "labels": {"app.kubernetes.io/name": "pxo-edge"}},
            "spec": {"nodeName": node_name, "containers": [{"name": "edge", "image": "pxo:test"}]},
            "status": {"phase": "Running", "containerStatuses": [cs],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class ApplyAPI:
    def __init__(self, *, token: str = "deploy-token", git_version: str = "v1.33.1") -> None:
        self.token = token
        self.git_version = git_version
        self.denied: set[str] = set()  # resources a SelfSubjectAccessReview says no to
        self.linger = 0.0  # seconds a deleted object stays visible (terminating)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._status: dict[tuple[str, str], dict[str, Any]] = {}
        self._deleted_at: dict[Key, float] = {}
        self._rv = 1000
        self._http: LoopbackHTTP | None = None

    # -- lifecycle

    def __enter__(self) -> ApplyAPI:
        self._http = LoopbackHTTP(_Handler, self, name="kubeapi-apply")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._http is not None
        self._http.close()

    @property
    def url(self) -> str:
        assert self._http is not None
        return self._http.url

    def kubeconfig(self, directory: Path) -> Path:
        return write_kubeconfig(directory, self.url, self.token)

    # -- the cluster's state, as a test sets and reads it

    def put(self, path: str, obj: Mapping[str, Any]) -> None:
        key = self._key(path)
        assert key is not None and key[3], path
        with self._lock:
            self._store(key, json.loads(json.dumps(obj)))

    def add_node(self, name: str, *, kernel: str, labels: Mapping[str, str] | None = None) -> None:
        self.put(f"/api/v1/nodes/{name}", node(name, kernel=kernel, labels=labels))

    def put_pod(self, pod: Mapping[str, Any]) -> None:
        self.put(f"/api/v1/namespaces/pxo/pods/{pod['metadata']['name']}", pod)

    def set_status(self, plural: str, name: str, status: Mapping[str, Any]) -> None:
        with self._lock:
            self._status[(plural, name)] = dict(status)

    def objects(self, plural: str | None = None) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [json.loads(json.dumps(o)) for k, o in self._objects.items()
                    if (plural is None or k[2] == plural) and self._deleted_at.get(k, now + 1) > now]

    def mutations(self) -> list[tuple[str, str]]:
        with self._lock:
            return [r for r in self.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")
                    and "accessreviews" not in r[1]]

    # -- internals

    @staticmethod
    def _key(path: str) -> Key | None:
        m = _PATH.match(path)
        if not m:
            return None
        return (m["gv"], m["ns"] or "", m["plural"], m["name"] or "")

    def _store(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self._rv)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        if key[1]:
            meta["namespace"] = key[1]
        self._objects[key] = obj
        self._deleted_at.pop(key, None)
        return obj

    def _view(self, key: Key) -> dict[str, Any] | None:
        """The object as a GET sees it (None: gone), with the status a test set."""
        obj = self._objects.get(key)
        if obj is None:
            return None
        deleted = self._deleted_at.get(key)
        if deleted is not None and time.monotonic() >= deleted:
            del self._objects[key]
            del self._deleted_at[key]
            return None
        out = json.loads(json.dumps(obj))
        if deleted is not None:
            out["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
        if (key[2], key[3]) in self._status:
            out["status"] = dict(self._status[(key[2], key[3])])
            if "generation" in out["metadata"]:
                out["status"].setdefault("observedGeneration", out["metadata"]["generation"])
        return out


def admit_secret(body: dict[str, Any], current: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """What the real API server does to a Secret it is sent: (status, message) when it refuses it,
    else None after folding ``stringData`` into ``data`` in place."""
    data = dict(body.get("data") or {})
    for k, v in data.items():
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, TypeError, ValueError):
            return 400, f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at key {k!r}"
    for k, v in (body.pop("stringData", None) or {}).items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    body["data"] = data
    kind = body.setdefault("type", "Opaque")
    name = body.get("metadata", {}).get("name", "")
    if kind == "kubernetes.io/tls":
        missing = [k for k in ("tls.crt", "tls.key") if k not in data]
        if missing:
            return 422, f'Secret "{name}" is invalid: ' + ", ".join(f"data[{k}]: Required value" for k in missing)
    if current is not None and current.get("type", "Opaque") != kind:
        return 422, f'Secret "{name}" is invalid: type: Invalid value: "{kind}": field is immutable'
    return None


def _labels_match(selector: str, obj: Mapping[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        k, _, v = term.replace("==", "=").partition("=")
        if labels.get(k) != v:
            return False
    return True


class _Handler(JsonHandler):
    server_api: ApplyAPI

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}") if n else {}

    def _handle(self, method: str) -> None:
        api = self.server_api
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        body = self._body() if method in ("POST", "PUT", "DELETE") else {}
        with api._lock:
            api.requests.append((method, url.path))
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            return self._json(401, status_body(401, "Unauthorized", "Unauthorized"))
        if url.path == "/version" and method == "GET":
            major, minor = api.git_version.lstrip("v").split(".")[:2]
            return self._json(200, {"major": major, "minor": minor, "gitVersion": api.git_version,
                                    "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate":
                                    "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                                    "platform": "linux/amd64"})
        if url.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and method == "POST":
            resource = body.get("spec", {}).get("resourceAttributes", {}).get("resource", "")
            allowed = resource not in api.denied
            return self._json(201, {**body, "status": {"allowed": allowed,
                                                       **({} if allowed else {"reason": "RBAC: denied"})}})
        key = api._key(url.path)
        if key is None:
            return self._json(404, status_body(404, "NotFound", f"the server could not find {url.path}"))
        gv, ns, plural, name = key
        with api._lock:
            if ns and api._view(("/api/v1", "", "namespaces", ns)) is None and method == "POST":
                return self._json(404, status_body(404, "NotFound", f'namespaces "{ns}" not found'))
            if method == "GET" and not name:
                sel = query.get("labelSelector", "")
                items = [v for k in list(api._objects) if k[:3] == key[:3]
                         and (v := api._view(k)) is not None and _labels_match(sel, v)]
                return self._json(200, {"kind": "List", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": str(api._rv)}, "items": items})
            if "spec" in body and method in ("POST", "PUT"):
                old = api._view(key) if method == "PUT" else None
                gen = int((old or {}).get("metadata", {}).get("generation") or 0)
                body.setdefault("metadata", {})["generation"] = \
                    gen + 1 if old is None or old.get("spec") != body["spec"] else gen
            if method == "POST" and not name:
                name = body.get("metadata", {}).get("name", "")
                k = (gv, ns, plural, name)
                if api._view(k) is not None:
                    return self._json(409, status_body(409, "AlreadyExists", f'{plural} "{name}" already exists'))
                if plural == "secrets" and (refused := admit_secret(body, None)):
                    return self._json(refused[0], status_body(refused[0], "Invalid", refused[1]))
                if "dryRun" in query:
                    return self._json(201, body)
                return self._json(201, api._store(k, body))
            current = api._view(key)
            if current is None:
                return self._json(404, status_body(404, "NotFound", f'{plural} "{name}" not found'))
            if method == "GET":
                return self._json(200, current)
            if method == "PUT":
                if body.get("metadata", {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
                    return self._json(409, status_body(409, "Conflict", "the object has been modified"))
                if plural == "secrets" and (refused := admit_secret(body, current)):
                    return self._json(refused[0], status_body(refused[0], "Invalid", refused[1]))
                body["metadata"]["uid"] = current["metadata"]["uid"]
                return self._json(200, api._store(key, body))
            if method == "DELETE":
                doomed = [key] + ([k for k in api._objects if k[1] == name] if plural == "namespaces" else [])
                for k in doomed:
                    api._deleted_at.setdefault(k, time.monotonic() + api.linger)
                return self._json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
        return self._json(405, status_body(405, "MethodNotAllowed", method))

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
