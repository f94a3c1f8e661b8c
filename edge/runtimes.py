"""Container names from the container runtimes themselves.

A cgroup path says which runtime made a container and its id
(edge/attribution.py); the name a person gave it is known only to the runtime,
and to the Kubernetes API server for pods. The API server may be unreachable,
and containers outside Kubernetes (podman, docker) have no pod at all: so the
edge also asks the runtime, over its local API socket:

- Docker and Podman (``podman system service``): the Docker-compatible HTTP API
  (``GET /containers/<id>/json``, ``GET /events``) on a Unix socket:
  ``DockerApiNames``.
- containerd and CRI-O: the Kubernetes CRI gRPC API (edge/runtimes_cri.py).

Each index keeps every name it has seen (ids never change names), fills itself
from the runtime's container list at start and from its event stream after
(so a container started and killed between two looks is still named), and
asks the runtime directly on a miss. It never blocks an event for long: a
lookup that cannot be answered within ``timeout`` gives None (the row keeps the
id), and a runtime that is down is retried in the background.

Sockets are found under the host's /run (``runtime_dir``; in a container,
where the host's /run is mounted): ``docker.sock``, ``podman/podman.sock``,
``containerd/containerd.sock``, ``crio/crio.sock``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pxo.common.backoff import Backoff

log = logging.getLogger(__name__)

# runtime (as edge/attribution.py names it) -> its socket below the host's /run, and the API it speaks
SOCKETS: dict[str, tuple[str, str]] = {
    "docker": ("docker.sock", "docker"),
    "podman": ("podman/podman.sock", "docker"),
    "containerd": ("containerd/containerd.sock", "cri"),
    "cri-o": ("crio/crio.sock", "cri"),
}


@dataclass(frozen=True)
class RuntimeContainer:
    """What a runtime says about one container."""

    name: str  # the container's name (a pod's container: its name in the pod spec)
    namespace: str | None = None  # the pod's namespace and name, when the runtime knows them (CRI labels)
    pod: str | None = None


@dataclass
class IndexStatus:
    connected: bool = False
    names: int = 0
    errors: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)


class ContainerNames(Protocol):
    """One runtime's names, by full container id."""

    runtime: str
    status: IndexStatus

    def lookup(self, container_id: str) -> RuntimeContainer | None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the Docker API's transport)."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class _NameCache:
    """Bounded id -> name memory, with a short memory of misses (not asked again for ``miss_ttl`` s)."""

    def __init__(self, size: int = 8192, miss_ttl: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._names: OrderedDict[str, RuntimeContainer] = OrderedDict()
        self._misses: dict[str, float] = {}
        self._size, self._miss_ttl, self._clock = size, miss_ttl, clock
        self._lock = threading.Lock()

    def put(self, cid: str, c: RuntimeContainer) -> None:
        with self._lock:
            self._names[cid] = c
            self._names.move_to_end(cid)
            self._misses.pop(cid, None)
            while len(self._names) > self._size:
                self._names.popitem(last=False)

    def get(self, cid: str) -> RuntimeContainer | None:
        with self._lock:
            return self._names.get(cid)

    def missed_recently(self, cid: str) -> bool:
        with self._lock:
            at = self._misses.get(cid)
            return at is not None and self._clock() - at < self._miss_ttl

    def miss(self, cid: str) -> None:
        with self._lock:
            if len(self._misses) > self._size:
                self._misses.clear()
            self._misses[cid] = self._clock()

    def __len__(self) -> int:
        return len(self._names)


class RuntimeIndex:
    """What every runtime's name index keeps: its socket, its status and its cache of names, and
    how it records a name, a (re)connection and a failure (DockerApiNames, runtimes_cri.CriNames)."""

    api = "runtime"  # how the log names its API

    def __init__(self, runtime: str, sock: Path, *, timeout: float, retry: float) -> None:
        self.runtime = runtime
        self.socket = sock
        self.timeout = timeout
        self.retry = retry
        self.status = IndexStatus()
        self._cache = _NameCache()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _remember(self, cid: str, c: RuntimeContainer) -> None:
        self._cache.put(cid, c)
        self.status.names = len(self._cache)

    def _connected(self, ok: bool) -> None:
        if ok and not self.status.connected:
            log.info("container names from %s at %s", self.runtime, self.socket)
            self.status.since = time.time()
        self.status.connected = ok

    def _failed(self, exc: BaseException) -> None:
        self.status.errors += 1
        msg = f"{self.socket}: {self._describe(exc)}"
        if msg != self.status.last_error:
            log.warning("%s %s: %s (container names from it are missing until it answers)", self.runtime,
                        self.api, msg)
        self.status.last_error = msg
        self.status.connected = False

    def _describe(self, exc: BaseException) -> str:
        return str(exc)


class DockerApiNames(RuntimeIndex):
    """Names from a Docker-compatible API socket (Docker, or Podman's API service)."""

    api = "API"

    def __init__(self, runtime: str, sock: Path, *, timeout: float = 0.5, retry: float = 5.0) -> None:
        super().__init__(runtime, sock, timeout=timeout, retry=retry)
        self._events: http.client.HTTPConnection | None = None

    # -- what the attributor calls ---------------------------------------------------

    def lookup(self, container_id: str) -> RuntimeContainer | None:
        found = self._cache.get(container_id)
        if found is not None or self._cache.missed_recently(container_id):
            return found
        try:
            info = self._get(f"/containers/{container_id}/json")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._failed(exc)
            info = None
        if not isinstance(info, dict) or not info.get("Name"):
            self._cache.miss(container_id)
            return None
        c = RuntimeContainer(str(info["Name"]).lstrip("/"))
        self._remember(container_id, c)
        return c

    # -- the background index -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"names-{self.runtime}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        conn = self._events
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = Backoff(self.retry, 60.0)
        while not self._stop.is_set():
            try:
                since = int(time.time()) - 1
                for c in self._get("/containers/json?all=true") or []:
                    names = c.get("Names") or []
                    if c.get("Id") and names:
                        self._remember(c["Id"], RuntimeContainer(str(names[0]).lstrip("/")))
                self._connected(True)
                backoff.reset()
                self._follow_events(since)  # returns when the stream ends
            except Exception as exc:  # the socket, HTTP, or an answer not shaped as expected: never the thread
                if self._stop.is_set():
                    return
                self._failed(exc)
            backoff.wait(self._stop)

    def _follow_events(self, since: int) -> None:
        filters = urllib.parse.quote(json.dumps({"type": ["container"]}))
        conn = _UnixHTTPConnection(self.socket, timeout=None)  # a stream: it waits for events
        self._events = conn
        try:
            conn.request("GET", f"/events?since={since}&filters={filters}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise ValueError(f"GET /events answered {resp.status}")
            for line in _lines(resp):
                ev = json.loads(line)
                actor = ev.get("Actor") or {}
                cid, name = actor.get("ID") or ev.get("id"), (actor.get("Attributes") or {}).get("name")
                if cid and name:
                    self._remember(cid, RuntimeContainer(name))
        finally:
            self._events = None
            conn.close()

    # -- plumbing -----------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        conn = _UnixHTTPConnection(self.socket, self.timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise ValueError(f"GET {path} answered {resp.status}")
        return json.loads(body)


def _lines(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        line = resp.readline()
        if not line:
            return
        if line.strip():
            yield line


def _cri(runtime: str, sock: Path) -> ContainerNames:
    from pxo.edge.runtimes_cri import CriNames  # gRPC and the CRI protos: only where a CRI socket is

    return CriNames(runtime, sock)


# API kind -> the index that speaks it
RUNTIME_APIS: dict[str, Callable[[str, Path], ContainerNames]] = {"docker": DockerApiNames, "cri": _cri}


def runtime_indexes(runtime_dir: Path, *, factories: Mapping[str, Callable[[str, Path], ContainerNames]] | None
                    = None) -> dict[str, ContainerNames]:
    """An index per runtime whose API socket is under ``runtime_dir`` (the host's /run)."""
    factories = factories or RUNTIME_APIS
    found: dict[str, ContainerNames] = {}
    for runtime, (rel, api) in SOCKETS.items():
        path = runtime_dir / rel
        if api in factories and path.is_socket():
            found[runtime] = factories[api](runtime, path)
    if not found:
        log.info("no container runtime API socket under %s: container names come from Kubernetes only",
                 runtime_dir)
    return found
