"""A real Kubernetes API server for tests, on loopback: pods, and core/v1 events.

It speaks the part of the API the official client uses to list and watch
pods: ``GET /api/v1/pods`` with ``fieldSelector`` (a PodList with
``metadata.resourceVersion``) and the same with ``watch=true`` (newline
delimited watch events, chunked, as the API server streams them: ADDED,
MODIFIED, DELETED, BOOKMARK, and ERROR with a 410 Status when the watched
resourceVersion is too old). Bearer tokens are checked.

    with KubeAPI(token="t") as api:
        api.put_pod(pod("web-0", uid=..., node="node-1", containers={"web": cid}))
        cfg = kubernetes.client.Configuration(host=api.url, api_key={"BearerToken": "t"},
                                              api_key_prefix={"BearerToken": "Bearer"})

Events: ``POST /api/v1/namespaces/NS/events`` creates one (409 if its name is taken),
``PATCH .../events/NAME`` merges the body's top-level fields into it (what a strategic
merge patch does to an Event's scalar fields; 404 if there is none), ``GET`` lists a
namespace's; ``events(namespace)`` is what the server holds.

Knobs for the failure paths: ``expire()`` (every open watch gets a 410 ERROR
event, and resuming from before that point gets 410 too), ``end_watches()``
(the server closes the streams normally, as its timeout would),
``fail_next(status)`` (answer the next requests with an error), and
``put_pod(..., notify=False)`` / ``delete_pod(..., notify=False)`` (a change a
watcher can only learn by listing again, as after a compaction).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.loopback import JsonHandler, LoopbackHTTP, write_kubeconfig


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch", "").lower() in ("true", "1")


def pod(name: str, *, uid: str, node: str, namespace: str = "default",
        containers: Mapping[str, str] | None = None, init_containers: Mapping[str, str] | None = None,
        ephemeral_containers: Mapping[str, str] | None = None, runtime: str = "containerd",
        annotations: Mapping[str, str] | None = None,
        last_terminated: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A pod as the API server sends it; containers map names to 64-hex ids.

    ``last_terminated`` maps a container name to the id of its previous run
    (lastState.terminated, e.g. after an OOM kill).
    """
    containers = dict(containers or {})

    def status(cname: str, cid: str) -> dict[str, Any]:
        s: dict[str, Any] = {
            "name": cname, "image": f"registry.example/{cname}:1", "imageID": f"registry.example/{cname}@sha256:"
            + "0" * 64, "containerID": f"{runtime}://{cid}", "ready": True, "restartCount": 0, "started": True,
            "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
        }
        if last_terminated and cname in last_terminated:
            s["restartCount"] = 1
            s["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                                             "containerID": f"{runtime}://{last_terminated[cname]}",
                                             "startedAt": "2025-01-01T00:00:00Z",
                                             "finishedAt": "2025-01-01T00:01:00Z"}}
        return s

    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "0",
                     "creationTimestamp": "2025-01-01T00:00:00Z", "annotations": dict(annotations or {})},
        "spec": {"nodeName": node, "containers": [{"name": c, "image": f"registry.example/{c}:1"}
                                                  for c in containers]},
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "10.0.0.1", "podIP": "10.244.0.7",
            "containerStatuses": [status(c, i) for c, i in containers.items()],
            "initContainerStatuses": [status(c, i) for c, i in (init_containers or {}).items()],
            "ephemeralContainerStatuses": [status(c, i) for c, i in (ephemeral_containers or {}).items()],
        },
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "spec.nodeName": lambda p: p.get("spec", {}).get("nodeName", ""),
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
}


def _selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """A fieldSelector: comma-separated key=value, key==value, key!=value."""
    terms = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key, value, False))
        else:
            key, _, value = term.replace("==", "=").partition("=")
            terms.append((key, value, True))
    for key, _, _ in terms:
        if key not in _FIELDS:
            raise ValueError(f'field label not supported: "{key}"')
    return lambda p: all((_FIELDS[k](p) == v) == eq for k, v, eq in terms)


class KubeAPI:
    """The server; ``url`` is its base URL once started (by ``with`` or ``start()``)."""

    def __init__(self, *, token: str | None = "test-token", tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS with this context (a server certificate, maybe requiring a client's)."""
        self.token = token
        self.tls = tls
        self.requests: list[Request] = []
        self._cond = threading.Condition()
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> pod
        self._rv = 100
        self._history: list[tuple[int, str, dict[str, Any]]] = []  # (rv, type, pod) watchers can replay
        self._oldest_rv = 0  # watching from before this is 410 Gone
        self._expiries = 0
        self._endings = 0
        self._failures: list[int] = []
        self._closed = False
        self._http: LoopbackHTTP | None = None
        self._events: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> event

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> KubeAPI:
        self._http = LoopbackHTTP(_Handler, self, name="kubeapi", tls=self.tls)
        return self

    @property
    def url(self) -> str:
        assert self._http is not None, "start() first"
        return self._http.url

    def kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig for this server and its token, written as ``directory``/kubeconfig
        (plain HTTP: a TLS server's tests write theirs, with their CA)."""
        assert self.tls is None, "a TLS server's kubeconfig needs its CA: write it in the test"
        return write_kubeconfig(directory, self.url, self.token)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> KubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the cluster's state ---------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def put_pod(self, obj: Mapping[str, Any], *, notify: bool = True) -> int:
        """Create or update a pod (ADDED or MODIFIED); its new resourceVersion."""
        new: dict[str, Any] = json.loads(json.dumps(obj))
        with self._cond:
            self._rv += 1
            new["metadata"]["resourceVersion"] = str(self._rv)
            uid = new["metadata"]["uid"]
            kind = "MODIFIED" if uid in self._pods else "ADDED"
            self._pods[uid] = new
            if notify:
                self._history.append((self._rv, kind, new))
            self._cond.notify_all()
            return self._rv

    def delete_pod(self, uid: str, *, notify: bool = True) -> int:
        with self._cond:
            obj = self._pods.pop(uid)
            self._rv += 1
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._rv)}}
            if notify:
                self._history.append((self._rv, "DELETED", obj))
            self._cond.notify_all()
            return self._rv

    def bookmark(self) -> None:
        """A BOOKMARK to every open watch that asked for them."""
        with self._cond:
            self._history.append((self._rv, "BOOKMARK", {"kind": "Pod", "apiVersion": "v1",
                                                         "metadata": {"resourceVersion": str(self._rv)}}))
            self._cond.notify_all()

    def expire(self) -> None:
        """Compact: open watches get a 410 ERROR event; older resourceVersions are gone."""
        with self._cond:
            self._oldest_rv = self._rv
            self._history.clear()
            self._expiries += 1
            self._cond.notify_all()

    def end_watches(self) -> None:
        """Close every open watch cleanly, as the server's timeout does."""
        with self._cond:
            self._endings += 1
            self._cond.notify_all()

    def fail_next(self, status: int = 500, count: int = 1) -> None:
        with self._cond:
            self._failures += [status] * count

    def events(self, namespace: str) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(json.dumps(e)) for (ns, _), e in self._events.items() if ns == namespace]

    def lists(self) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if not r.is_watch]

    def watches(self) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.is_watch]


class _Handler(JsonHandler):
    server_api: KubeAPI

    def _begin(self, method: str) -> tuple[Request, list[str]] | None:
        """Record the request, check the token; the path's parts, or None when answered already."""
        api = self.server_api
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        req = Request(method, url.path, query, self.headers.get("Authorization"))
        with api._cond:
            api.requests.append(req)
            failure = api._failures.pop(0) if api._failures else None
        if failure is not None:
            self._json(failure, _status(failure, "InternalError", "injected failure"))
            return None
        if api.token is not None and req.authorization != f"Bearer {api.token}":
            self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            return None
        return req, url.path.strip("/").split("/")

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        body: dict[str, Any] = json.loads(self.rfile.read(n) or b"{}")
        return body

    def do_POST(self) -> None:
        begun = self._begin("POST")
        if begun is None:
            return
        _, parts = begun
        if len(parts) != 5 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "events":
            return self._json(404, _status(404, "NotFound", f"the server could not find {self.path}"))
        ns, event = parts[3], self._body()
        name = event.get("metadata", {}).get("name", "")
        api = self.server_api
        with api._cond:
            if (ns, name) in api._events:
                return self._json(409, _status(409, "AlreadyExists", f'events "{name}" already exists'))
            api._rv += 1
            event["metadata"] = {**event.get("metadata", {}), "namespace": ns, "resourceVersion": str(api._rv)}
            api._events[(ns, name)] = event
        return self._json(201, event)

    def do_PATCH(self) -> None:
        begun = self._begin("PATCH")
        if begun is None:
            return
        _, parts = begun
        if len(parts) != 6 or parts[:3] != ["api", "v1", "namespaces"] or parts[4] != "events":
            return self._json(404, _status(404, "NotFound", f"the server could not find {self.path}"))
        ns, name, patch = parts[3], parts[5], self._body()
        api = self.server_api
        with api._cond:
            if (ns, name) not in api._events:
                return self._json(404, _status(404, "NotFound", f'events "{name}" not found'))
            api._rv += 1
            event = {**api._events[(ns, name)], **{k: v for k, v in patch.items() if k != "metadata"}}
            event["metadata"] = {**event["metadata"], "resourceVersion": str(api._rv)}
            api._events[(ns, name)] = event
        return self._json(200, event)

    def do_GET(self) -> None:
        api = self.server_api
        begun = self._begin("GET")
        if begun is None:
            return
        req, parts = begun
        query = req.query
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "events":
            return self._json(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {},
                                    "items": api.events(parts[3])})
        if req.path != "/api/v1/pods":
            return self._json(404, _status(404, "NotFound", f"the server could not find {req.path}"))
        try:
            match = _selector(query.get("fieldSelector", ""))
        except ValueError as exc:
            return self._json(400, _status(400, "BadRequest", str(exc)))
        if req.is_watch:
            return self._watch(api, match, query)
        with api._cond:
            items = [p for p in api._pods.values() if match(p)]
            body = {"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(api._rv)}, "items": items}
        return self._json(200, body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, kind: str, obj: Mapping[str, Any]) -> None:
        self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    def _watch(self, api: KubeAPI, match: Callable[[Mapping[str, Any]], bool], query: Mapping[str, str]) -> None:
        rv = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            with api._cond:
                expiries, endings = api._expiries, api._endings
                if rv not in ("", "0") and int(rv) < api._oldest_rv:
                    gone = True
                    initial: list[dict[str, Any]] = []
                else:
                    gone = False
                    # "" and "0": start with the current state, as ADDED events
                    initial = [p for p in api._pods.values() if match(p)] if rv in ("", "0") else []
                    since = api._rv if rv in ("", "0") else int(rv)
                    cursor = next((i for i, (erv, _, _) in enumerate(api._history) if erv > since),
                                  len(api._history))
            if gone:
                self._event("ERROR", _status(410, "Expired", f"too old resource version: {rv} ({api._oldest_rv})"))
                return self._chunk(b"")
            for p in initial:
                self._event("ADDED", p)
            while True:
                events: list[tuple[int, str, dict[str, Any]]]
                with api._cond:
                    while (not api._closed and cursor >= len(api._history) and api._expiries == expiries
                           and api._endings == endings and time.monotonic() < deadline):
                        api._cond.wait(max(0.0, deadline - time.monotonic()))
                    if api._closed or api._endings != endings or time.monotonic() >= deadline:
                        events, end, expired = [], True, False
                    elif api._expiries != expiries:
                        events, end, expired = [], True, True
                    else:
                        events, end, expired = api._history[cursor:], False, False
                        cursor = len(api._history)
                for _rv, kind, obj in events:
                    if kind == "BOOKMARK":
                        if bookmarks:
                            self._event(kind, obj)
                    elif match(obj):
                        self._event(kind, obj)
                if expired:
                    self._event("ERROR", _status(410, "Expired", "too old resource version"))
                if end:
                    return self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            return
