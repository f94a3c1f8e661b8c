"""cgroup path -> container -> pod: the edge's attribution enricher.

The kernel names a task's cgroup by its path (from /proc/PID/cgroup, or the
kernfs walk of bpf/cgroup.h); on cgroup v1 that is the memory hierarchy's
path, on v2 the unified one. The layouts look alike on both. This module turns
the path into who owns it, in two steps:

1. ``parse_cgroup_path`` (pure, no I/O): the runtime, the container id, the
   pod uid and QoS class, as the path itself spells them.
2. ``KubePodWatcher`` (a ``PodIndex``): namespace, pod and container names,
   from the API server, for the pods of this node only.

``Attributor`` joins both into the ``ATTRIBUTION_COLUMNS``. Outside a
cluster the watcher switches itself off with one log line
(``KubePodWatcher.from_environment``) and the ids from the path still come
through; an unknown path gives all NULLs and the caller keeps the raw path.

Layouts recognised (``tests/edge/test_attribution.py`` has one case each):

Kubernetes, systemd cgroup driver (kubelet and runtime agree on it)::

    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
    /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/crio-<id>.scope
    /kubepods.slice/kubepods-pod<uid_>.slice/docker-<id>.scope          (guaranteed; cri-dockerd)

  systemd forbids "-" inside a slice's own name, so the uid has "_" there;
  ``pod_uid`` is given back dashed, as the API server shows it.

Kubernetes, cgroupfs driver::

    /kubepods/burstable/pod<uid>/<id>     /kubepods/besteffort/pod<uid>/<id>
    /kubepods/pod<uid>/<id>  (guaranteed)  .../pod<uid>/crio-<id>   (cri-o)

  A bare id does not say whether containerd or docker made it: ``container_runtime``
  is NULL there.

Kubernetes with the kubelet's systemd driver but a runtime using cgroupfs
(the runtime takes systemd's "slice:prefix:id" literally, typically below its
own service): ``/system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>``.

Nested prefixes and cgroup namespaces: the kubepods part is matched wherever
it appears (kind: ``/system.slice/docker-<node>.scope/kubelet.slice/kubelet-kubepods.slice/
kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod<uid>.slice/...``;
k3d/minikube: ``/docker/<node>/kubepods/...``; a reader in another cgroup
namespace: ``/../../kubepods-burstable-pod<uid>.slice/...``). The innermost pod
wins, so the node container of kind is never taken for the workload.

Decisions for the cases that are not a plain container:

- The pod's own cgroup (``...-pod<uid>.slice``, ``.../pod<uid>``): pod uid and
  QoS class, no runtime, no container (the pod-level limit lives there).
- The pause sandbox (``cri-containerd-<sandbox id>.scope`` below the pod): its
  path cannot be told from a container's, so it gets the runtime and its
  (sandbox) id; the API server lists no container with that id, so
  ``container`` stays NULL while namespace and pod are filled.
- conmon, cri-o's and podman's per-container monitor (``crio-conmon-<id>.scope``,
  ``libpod-conmon-<id>.scope``): it is not the container. Runtime (and the pod
  when it sits in one) are kept, ``container_id`` is NULL, and ``unit`` carries
  the monitor's cgroup name, which holds the id of the container it watches.
- Docker: ``/docker/<id>`` (cgroupfs), ``/system.slice/docker-<id>.scope`` (systemd).
- Podman: ``/machine.slice/libpod-<id>.scope``, rootless
  ``/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-<id>.scope``,
  cgroupfs ``/libpod_parent/libpod-<id>``; sub-cgroups below the container
  (``libpod-<id>.scope/container``, systemd inside) stay the container's.
- containerd without Kubernetes: ``/system.slice/containerd.service`` is the
  daemon (and the shims it starts there): a systemd unit, no container.
  nerdctl's containers are ``/system.slice/nerdctl-<id>.scope`` (systemd) and
  ``/default/<id>`` (cgroupfs, containerd namespace "default"). Other
  containerd namespaces (``ctr -n NAME``) give ``/NAME/<id>``, and ctr lets a
  user pick any id: those are not recognised (nothing in the path says
  "container"), nor is any id that is not 64 hex digits.
- A systemd unit that is no container (``/system.slice/nginx.service``,
  ``session-3.scope``, user services): runtime "systemd", the innermost unit.
- Anything else (the root, slices alone, LXC, ECS...): all NULL.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pxo.common.backoff import Backoff
from pxo.common.kubeconfig import kubeconfig_files
from pxo.common.schema import Column, Table
from pxo.edge.kubeclient import SERVICE_ACCOUNT, ConfigError, KubeClient, KubeError, Watch
from pxo.edge.runtimes import ContainerNames, RuntimeContainer

if TYPE_CHECKING:
    from pxo.edge.sources.base import Sink  # the sources package imports this module

log = logging.getLogger(__name__)

ATTRIBUTION_COLUMNS: tuple[Column, ...] = (
    Column("container_runtime", "VARCHAR",
           "Runtime that made the cgroup: containerd, cri-o, docker, podman, systemd (a plain unit), or NULL"),
    Column("container_id", "VARCHAR", "Full 64-hex container id, when the cgroup path carries it"),
    Column("pod_uid", "VARCHAR", "Kubernetes pod uid from the kubepods path, dashed as the API server shows it"),
    Column("qos_class", "VARCHAR", "Pod QoS class from the kubepods path: guaranteed, burstable or besteffort"),
    Column("namespace", "VARCHAR", "Pod namespace, from the Kubernetes API server"),
    Column("pod", "VARCHAR", "Pod name, from the Kubernetes API server"),
    Column("container", "VARCHAR",
           "Container name: in the pod spec (from the Kubernetes API server, or the CRI runtime), or as the "
           "runtime names it (podman, docker)"),
)

NOT_IN_CLUSTER = "not in a Kubernetes cluster: pod names are off; cgroup paths still give container and pod ids"

# -- parsing a cgroup path ------------------------------------------------------

_HEX64 = r"[0-9a-f]{64}"
# A pod uid: a UUID (with "_" instead of "-" in systemd slice names), or the
# 32-hex config hash the kubelet uses as the uid of a static pod.
_UID = r"[0-9a-f]{8}(?:[-_][0-9a-f]{4}){3}[-_][0-9a-f]{12}|[0-9a-f]{32}"

# kubepods[-<qos>]-pod<uid>.slice, with any cgroup-root prefix (kind: "kubelet-").
_POD_SLICE = re.compile(rf"(?:.+-)?kubepods(?:-(?P<qos>burstable|besteffort))?-pod(?P<uid>{_UID})\.slice")
# systemd's "slice:prefix:id" taken literally as one directory name.
_POD_SLICE_INLINE = re.compile(rf"(?P<slice>[^:]+\.slice):(?P<prefix>[^:]+):(?P<id>{_HEX64})")
_POD_DIR = re.compile(rf"pod(?P<uid>{_UID})")  # cgroupfs driver
_PREFIXED = re.compile(
    rf"(?P<prefix>cri-containerd|crio-conmon|crio|docker|libpod-conmon|libpod|nerdctl)-(?P<id>{_HEX64})(?:\.scope)?")
_BARE_ID = re.compile(_HEX64)
_UNIT = re.compile(r".+\.(?:service|scope|socket|mount|swap)")

_RUNTIME_OF_PREFIX = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "crio-conmon": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "libpod-conmon": "podman",
    "nerdctl": "containerd",
}
_CONMON = frozenset({"crio-conmon", "libpod-conmon"})
# Parents that make a bare 64-hex directory a container outside Kubernetes.
_RUNTIME_OF_PARENT = {"docker": "docker", "default": "containerd"}


@dataclasses.dataclass(frozen=True)
class CgroupIdentity:
    """What a cgroup path says about its owner; every field may be None."""

    runtime: str | None = None  # containerd | cri-o | docker | podman | systemd
    container_id: str | None = None  # full 64-hex id
    pod_uid: str | None = None  # dashed (a static pod's 32-hex hash stays as is)
    qos_class: str | None = None  # guaranteed | burstable | besteffort
    # The systemd unit of a plain service or scope (runtime "systemd"), or the
    # cgroup name of a runtime's conmon monitor (no container_id then).
    unit: str | None = None


UNKNOWN = CgroupIdentity()


@dataclasses.dataclass(frozen=True)
class _Container:
    runtime: str | None
    container_id: str | None
    unit: str | None = None


def normalize_pod_uid(uid: str) -> str:
    """The API server's form of a pod uid taken from a cgroup name."""
    return uid.lower().replace("_", "-")


def _container(name: str, parent: str | None, *, in_pod: bool) -> _Container | None:
    m = _PREFIXED.fullmatch(name)
    if m:
        prefix = m["prefix"]
        if prefix in _CONMON:
            return _Container(_RUNTIME_OF_PREFIX[prefix], None, unit=name)
        return _Container(_RUNTIME_OF_PREFIX[prefix], m["id"])
    if _BARE_ID.fullmatch(name):
        if in_pod:  # cgroupfs driver: containerd and docker both use the bare id
            return _Container(None, name)
        if parent in _RUNTIME_OF_PARENT:
            return _Container(_RUNTIME_OF_PARENT[parent], name)
    return None


def _pod(parts: list[str], i: int, elided: bool) -> tuple[str, str | None, _Container | None] | None:
    """(pod uid, qos class, inline container) when parts[i] is a pod's cgroup."""
    name = parts[i]
    m = _POD_SLICE.fullmatch(name)
    if m:
        return normalize_pod_uid(m["uid"]), m["qos"] or "guaranteed", None
    m = _POD_SLICE_INLINE.fullmatch(name)
    if m:
        pod = _POD_SLICE.fullmatch(m["slice"])
        if pod is None:
            return None
        runtime = _RUNTIME_OF_PREFIX.get(m["prefix"])
        inner = (_Container(runtime, None, unit=name) if m["prefix"] in _CONMON
                 else _Container(runtime, m["id"]))
        return normalize_pod_uid(pod["uid"]), pod["qos"] or "guaranteed", inner
    m = _POD_DIR.fullmatch(name)
    # "pod<uid>" alone is too common a name: it must sit below kubepods, or
    # below ancestors a cgroup namespace hid ("/../../pod<uid>/<id>").
    if m and ("kubepods" in parts[:i] or elided):
        parent = parts[i - 1] if i else None
        if parent in ("burstable", "besteffort"):
            qos: str | None = parent
        elif parent == "kubepods":
            qos = "guaranteed"
        else:
            qos = None  # the QoS level was elided by a cgroup namespace
        return normalize_pod_uid(m["uid"]), qos, None
    return None


def parse_cgroup_path(path: str | None) -> CgroupIdentity:
    """Runtime, container id, pod uid, QoS class and unit as ``path`` spells them.

    Pure: no I/O. See the module docstring for the layouts and decisions.
    """
    if not path:
        return UNKNOWN
    raw = path.split("/")
    elided = ".." in raw
    parts = [p for p in raw if p and p not in (".", "..")]

    for i in range(len(parts) - 1, -1, -1):  # the innermost pod
        pod = _pod(parts, i, elided)
        if pod is None:
            continue
        uid, qos, inner = pod
        if inner is None and i + 1 < len(parts):
            inner = _container(parts[i + 1], parts[i], in_pod=True)
        if inner is None:
            return CgroupIdentity(pod_uid=uid, qos_class=qos)
        return CgroupIdentity(runtime=inner.runtime, container_id=inner.container_id, pod_uid=uid,
                              qos_class=qos, unit=inner.unit)

    for i in range(len(parts) - 1, -1, -1):  # the innermost container
        c = _container(parts[i], parts[i - 1] if i else None, in_pod=False)
        if c is not None:
            return CgroupIdentity(runtime=c.runtime, container_id=c.container_id, unit=c.unit)

    for name in reversed(parts):  # the innermost systemd unit
        if _UNIT.fullmatch(name):
            return CgroupIdentity(runtime="systemd", unit=name)
    return UNKNOWN


# -- pod names -----------------------------------------------------------------


class PodIndex(Protocol):
    """Pod names by uid (and container names by id), for the pods of this node."""

    def lookup(self, pod_uid: str, container_id: str | None) -> tuple[str, str, str | None] | None:
        """(namespace, pod, container name or None), or None for an unknown pod."""
        ...


@runtime_checkable
class _Lifecycle(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class Attributor:
    """cgroup path -> the ATTRIBUTION_COLUMNS, for the edge's enricher.

    Parse results are memoized in a bounded LRU (the same few hundred paths
    repeat); pod names are looked up on every call, as pods come and go.
    ``pods`` is None outside a cluster: the three name columns stay NULL.
    """

    def __init__(self, *, pods: PodIndex | None = None, runtimes: Mapping[str, ContainerNames] | None = None,
                 cache_size: int = 4096) -> None:
        self.pods = pods
        self.runtimes = dict(runtimes or {})  # runtime -> its names index (edge/runtimes.py)
        self._parse = functools.lru_cache(maxsize=cache_size)(parse_cgroup_path)
        self._lookup_failed = False

    def start(self) -> None:
        """Start the pod index (the watcher's thread) if it has a lifecycle, and the runtimes' indexes."""
        pods: object = self.pods
        if isinstance(pods, _Lifecycle):
            pods.start()
        for index in self.runtimes.values():
            index.start()

    def stop(self) -> None:
        pods: object = self.pods
        if isinstance(pods, _Lifecycle):
            pods.stop()
        for index in self.runtimes.values():
            index.stop()

    def parse(self, cgroup_path: str | None) -> CgroupIdentity:
        return self._parse(cgroup_path) if cgroup_path else UNKNOWN

    def cache_info(self) -> functools._CacheInfo:
        return self._parse.cache_info()

    def attribute(self, cgroup_path: str | None) -> dict[str, str | None]:
        """One value per ATTRIBUTION_COLUMNS name; all None for None or an unknown path."""
        ident = self.parse(cgroup_path)
        names: tuple[str, str, str | None] | None = None
        if self.pods is not None and ident.pod_uid is not None:
            try:
                names = self.pods.lookup(ident.pod_uid, ident.container_id)
            except Exception:  # an enricher must never cost the event
                if not self._lookup_failed:
                    log.exception("pod name lookup failed; pod names stay empty where it fails")
                    self._lookup_failed = True
        namespace, pod, container = names if names is not None else (None, None, None)
        index = self.runtimes.get(ident.runtime or "")
        if ident.container_id is not None and index is not None and (container is None or pod is None):
            # The runtime knows the name even when the API server is unreachable, and for
            # containers that belong to no pod at all (podman, docker).
            found = self._runtime_lookup(index, ident.container_id)
            if found is not None:
                container = container or found.name
                namespace, pod = namespace or found.namespace, pod or found.pod
        return {
            "container_runtime": ident.runtime,
            "container_id": ident.container_id,
            "pod_uid": ident.pod_uid,
            "qos_class": ident.qos_class,
            "namespace": namespace,
            "pod": pod,
            "container": container,
        }


    def _runtime_lookup(self, index: ContainerNames, container_id: str) -> RuntimeContainer | None:
        try:
            return index.lookup(container_id)
        except Exception:  # an enricher must never cost the event
            if not self._lookup_failed:
                log.exception("%s name lookup failed; container names stay empty where it fails", index.runtime)
                self._lookup_failed = True
            return None


# -- the pods of this node, from the API server --------------------------------


@dataclasses.dataclass(frozen=True)
class _Pod:
    namespace: str
    name: str
    containers: Mapping[str, str]  # container id (bare, lower case) -> container name
    mirror_of: str | None = None  # a static pod's config hash: the uid its cgroup carries


def bare_container_id(value: str | None) -> str | None:
    """'containerd://<id>', 'cri-o://<id>', 'docker://<id>' -> '<id>'."""
    if not value:
        return None
    return value.rpartition("://")[2].lower() or None


def _pod_from_api(obj: Mapping[str, Any]) -> tuple[str, _Pod] | None:
    """(uid, _Pod) from a pod as the API server sends it (JSON, camelCase)."""
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    containers: dict[str, str] = {}
    status = obj.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or ():
            name = cs.get("name")
            if not name:
                continue
            # The previous run of a restarted container (an OOM-killed one,
            # typically) moves to lastState.terminated: its id stays known.
            ids = (cs.get("containerID"),
                   ((cs.get("state") or {}).get("terminated") or {}).get("containerID"),
                   ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID"))
            for cid in ids:
                bare = bare_container_id(cid)
                if bare:
                    containers.setdefault(bare, name)
    mirror = (meta.get("annotations") or {}).get("kubernetes.io/config.mirror")
    return uid.lower(), _Pod(meta.get("namespace") or "", meta.get("name") or "", containers,
                             mirror.lower() if mirror else None)


class _Expired(Exception):
    """The API server no longer has the resourceVersion we watch from (410 Gone)."""


@dataclasses.dataclass
class WatcherStatus:
    node: str
    connected: bool = False  # listed and watching
    pods: int = 0
    resource_version: str | None = None
    relists: int = 0  # lists after the first, for any reason
    errors: int = 0
    last_error: str | None = None


class KubePodWatcher:
    """A PodIndex fed by list + watch of this node's pods (spec.nodeName=<node>).

    One background thread lists the pods, then watches from the list's
    resourceVersion. A watch the server ends (its timeout) is resumed from
    the last resourceVersion seen (events and BOOKMARKs); 410 Gone re-lists at
    once; any other error re-lists after an exponential backoff with jitter.
    Lists ask for resourceVersion "0" (the API server's watch cache), so a
    DaemonSet on every node does not turn each re-list into a quorum read of
    etcd; only a list after a 410 asks for the latest state.

    Pods are read as the API server's JSON (edge/kubeclient.py), not as
    models: the few fields used here are read defensively, so one pod with a
    field missing or typed differently (another server version, a proxy)
    cannot fail its event and, with it, the watch.
    """

    def __init__(self, *, node: str, client: KubeClient,
                 watch_timeout: Callable[[], int] | None = None,
                 backoff: tuple[float, float] = (0.5, 30.0),
                 request_timeout: tuple[float, float] = (10.0, 60.0)) -> None:
        """``client`` says how to reach the API server. ``watch_timeout`` gives each
        watch's server-side timeout in seconds (default: 5 to 10 minutes, spread like
        client-go's); ``request_timeout`` is (connect, read) for the list, the watch's
        read timeout being its own timeout plus the read value.
        """
        if not node:
            raise ValueError("the node name is needed to watch this node's pods")
        self.node = node
        self.client = client
        self._watch_timeout = watch_timeout or (lambda: random.randint(300, 600))
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._selector = f"spec.nodeName={node}"
        self._lock = threading.Lock()
        self._pods: dict[str, _Pod] = {}
        self._mirrors: dict[str, str] = {}  # static pod config hash -> mirror pod uid
        self._status = WatcherStatus(node)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self._lists = 0
        self._logged_error: str | None = None

    # -- in a cluster or not ---------------------------------------------------

    @classmethod
    def from_environment(cls, node: str, *, environ: Mapping[str, str] | None = None,
                         serviceaccount: Path = SERVICE_ACCOUNT,
                         home: Path | None = None, **kwargs: Any) -> KubePodWatcher | None:
        """A watcher when running in a cluster, else None after one log line.

        In a pod (KUBERNETES_SERVICE_HOST set) the service account is used;
        elsewhere a kubeconfig at $KUBECONFIG or ~/.kube/config. ``node`` is
        the Kubernetes node name (in a DaemonSet: spec.nodeName through the
        downward API; the pod's hostname is not it). ``kwargs`` go to the
        constructor. The watcher is returned unstarted (``Attributor.start``
        starts it).
        """
        env = os.environ if environ is None else environ
        in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
        files = [] if in_cluster else kubeconfig_files(env, home)
        if not in_cluster and not files:
            log.info(NOT_IN_CLUSTER)
            return None
        source = ("in-cluster service account" if in_cluster
                  else f"kubeconfig {os.pathsep.join(str(p) for p in files)}")
        try:
            client = (KubeClient.in_cluster(env, serviceaccount) if in_cluster
                      else KubeClient.from_kubeconfig(files))
            watcher = cls(node=node, client=client, **kwargs)
        except (ConfigError, ValueError, OSError) as exc:  # whatever it is, one line and off
            log.warning("Kubernetes client configuration failed (%s): %s; pod names are off; "
                        "cgroup paths still give container and pod ids", source, exc)
            return None
        log.info("pod names from the Kubernetes API at %s (%s), pods of node %s", client.host, source, node)
        return watcher

    # -- PodIndex ----------------------------------------------------------------

    def lookup(self, pod_uid: str, container_id: str | None) -> tuple[str, str, str | None] | None:
        uid = normalize_pod_uid(pod_uid)
        with self._lock:
            pod = self._pods.get(uid)
            if pod is None and uid in self._mirrors:
                pod = self._pods.get(self._mirrors[uid])
        if pod is None:
            return None
        return pod.namespace, pod.name, pod.containers.get(container_id.lower()) if container_id else None

    @property
    def status(self) -> dict[str, Any]:
        """connected, pods known, last error... (a snapshot)."""
        with self._lock:
            self._status.pods = len(self._pods)
            return dataclasses.asdict(self._status)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"pod-watch-{self.node}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; a blocked watch read is interrupted by shutting its socket."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        deadline = time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            with self._lock:
                w = self._watch
            if w is not None:
                w.stop()  # again each round: a stream that was still connecting resets the flag
            thread.join(0.05)
        if thread is not None and thread.is_alive():
            log.warning("the pod watcher did not stop within %.0f s; leaving its daemon thread", timeout)
        with self._lock:
            self._status.connected = False

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(*self._backoff)
        rv: str | None = None
        consistent = False  # list from etcd rather than the watch cache
        expired_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if rv is None:
                    rv = self._list(consistent=consistent)
                    backoff.reset()
                rv = self._watch_from(rv)
                consistent, expired_in_a_row = False, 0  # the server ended the watch: resume from rv
            except _Expired as exc:
                log.debug("pod watch expired (%s): listing again", exc)
                # Ask for the latest state this time (a list from the watch
                # cache may be older than the server still keeps), and back
                # off if expiry keeps following every list.
                rv, consistent = None, True
                if expired_in_a_row:
                    backoff.wait(self._stopping)
                expired_in_a_row += 1
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._failed(exc)
                rv, consistent = None, False
                backoff.wait(self._stopping)

    def _list(self, *, consistent: bool = False) -> str:
        # resourceVersion "0": any recent state, served from the API server's
        # watch cache; unset: the latest state, a quorum read.
        query = {"fieldSelector": self._selector}
        if not consistent:
            query["resourceVersion"] = "0"
        body = self.client.request("GET", "/api/v1/pods", query=query, timeout=self._request_timeout)
        if not isinstance(body, dict):
            raise KubeError(0, "the pod list is not a JSON object")
        pods: dict[str, _Pod] = {}
        for item in body.get("items") or ():
            entry = _pod_from_api(item)
            if entry is not None:
                pods[entry[0]] = entry[1]
        rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            self._pods = pods
            self._mirrors = {p.mirror_of: uid for uid, p in pods.items() if p.mirror_of}
            if self._lists:
                self._status.relists += 1
            self._lists += 1
            self._status.resource_version = rv
            was = self._status.connected
            self._status.connected = True
        if not was:
            log.info("watching the pods of node %s: %d known", self.node, len(pods))
            self._logged_error = None
        return rv

    def _watch_from(self, rv: str) -> str:
        """Apply watch events until the server ends the stream; the last resourceVersion seen."""
        timeout = self._watch_timeout()
        w = self.client.watch("/api/v1/pods", query={
            "fieldSelector": self._selector, "resourceVersion": rv, "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout)}, timeout=(self._request_timeout[0], timeout + self._request_timeout[1]))
        with self._lock:
            if self._stopping.is_set():
                return rv
            self._watch = w
        try:
            for event in w.events():
                obj = event.get("object")
                if not isinstance(obj, dict):
                    continue
                if event.get("type") == "ERROR":  # a Status: 410 Gone when rv is too old
                    code = int(obj.get("code") or 0)
                    if code == 410:
                        raise _Expired(str(obj.get("reason") or obj.get("message") or "Gone"))
                    raise KubeError(code, str(obj.get("reason") or "watch error"), str(obj.get("message") or ""))
                rv = self._apply(event.get("type"), obj) or rv
        except KubeError as exc:
            if exc.status == 410:
                raise _Expired(exc.reason) from exc
            raise
        finally:
            with self._lock:
                self._watch = None
        return rv

    def _apply(self, kind: str | None, obj: Mapping[str, Any]) -> str | None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            entry = _pod_from_api(obj)
            if entry is not None:
                uid, pod = entry
                with self._lock:
                    self._pods[uid] = pod
                    if pod.mirror_of:
                        self._mirrors[pod.mirror_of] = uid
        elif kind == "DELETED":
            uid = ((obj.get("metadata") or {}).get("uid") or "").lower()
            with self._lock:
                gone = self._pods.pop(uid, None)
                if gone is not None and gone.mirror_of:
                    self._mirrors.pop(gone.mirror_of, None)
        # BOOKMARK: only the resourceVersion
        if rv:
            with self._lock:
                self._status.resource_version = str(rv)
        return str(rv) if rv else None

    def _failed(self, exc: Exception) -> None:
        message = _describe(exc)
        with self._lock:
            self._status.connected = False
            self._status.errors += 1
            self._status.last_error = message
        if message != self._logged_error:  # one line per new kind of trouble, not per retry
            log.warning("pod watch for node %s failed: %s; retrying with backoff", self.node, message)
            self._logged_error = message
        else:
            log.debug("pod watch for node %s failed again: %s", self.node, message)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KubeError):
        return str(exc) if exc.status else exc.reason
    return f"{type(exc).__name__}: {exc}"



# -- the enricher in the edge's write path -------------------------------------------


def with_attribution(table: Table) -> Table:
    """``table`` with the ATTRIBUTION_COLUMNS appended, when it has a cgroup_path to attribute."""
    if "cgroup_path" not in table.column_names or "container_id" in table.column_names:
        return table
    return dataclasses.replace(table, columns=(*table.columns, *ATTRIBUTION_COLUMNS))


class AttributingSink:
    """Between the sources and the store: every row of a table with a ``cgroup_path``
    gets the ATTRIBUTION_COLUMNS, so one mechanism attributes every table."""

    def __init__(self, sink: Sink, attributor: Attributor, tables: Iterable[Table]) -> None:
        self._sink = sink
        self.attributor = attributor
        self._tables = {t.name for t in tables if "container_id" in t.column_names}

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        if table in self._tables and row.get("cgroup_path") is not None:
            row = {**row, **self.attributor.attribute(row["cgroup_path"])}
        self._sink.append(table, row)
