"""Container names from containerd and CRI-O, over the Kubernetes CRI gRPC API.

Both runtimes serve ``runtime.v1.RuntimeService`` (proto/pxo/cri/v1/api.proto,
a wire-compatible subset of k8s.io/cri-api) on their Unix socket. The names
come from the labels the kubelet puts on every container it creates
(``io.kubernetes.container.name``, ``io.kubernetes.pod.name``,
``io.kubernetes.pod.namespace``); a container made by another CRI client
(crictl) has only its CRI metadata name, and no pod.

Like ``DockerApiNames`` (edge/runtimes.py): the index fills itself from
``ListContainers`` at start, then follows ``GetContainerEvents``. That stream
exists from containerd 1.7 and CRI-O 1.26, but containerd 1.7 and CRI-O 1.26-1.27
give each event to only one of the clients reading it: there pxo would steal
events from the kubelet (Evented PLEG), so it does not read them. Then, and
when the runtime has no events (UNIMPLEMENTED: containerd 1.6; an empty stream:
CRI-O with pod events off), the index lists the containers every ``poll`` s.
A miss asks ``ContainerStatus`` directly, so a container the index has not
seen yet is still named; the poll period only matters for a container that is
gone before anyone asks (started and OOM-killed within ``poll`` s).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from pxo.common.backoff import Backoff
from pxo.cri.v1 import api_pb2, api_pb2_grpc
from pxo.edge.runtimes import RuntimeContainer, RuntimeIndex

log = logging.getLogger(__name__)

# Labels the kubelet sets on each container it creates (pkg/kubelet/types/labels.go).
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

# grpcio-tools types the messages (.pyi) but not the service stubs: the stub is Any, by design.
_STUB: Any = api_pb2_grpc.RuntimeServiceStub

# A full list can be long on a busy node; the per-lookup timeout is for one container.
LIST_TIMEOUT = 10.0


class CriNames(RuntimeIndex):
    """Names from a CRI runtime socket (containerd, CRI-O)."""

    api = "CRI API"

    def __init__(self, runtime: str, sock: Path, *, timeout: float = 0.5, retry: float = 5.0,
                 poll: float = 2.0) -> None:
        super().__init__(runtime, sock, timeout=timeout, retry=retry)
        self.poll = poll
        # How the index learns of new containers: "events" (GetContainerEvents), "polling" (the
        # runtime has no event stream, or one pxo must not read), or "" before the runtime answered.
        self.mode = ""
        self.version = ""  # the runtime's name and version, once it has answered
        self._poll_reason = ""
        # The channel connects lazily and reconnects by itself: a runtime that is down at
        # start, or restarts, needs no new channel, only new calls.
        self._channel = grpc.insecure_channel("unix://" + str(sock))
        self._stub: Any = _STUB(self._channel)

    # -- what the attributor calls ---------------------------------------------------

    def lookup(self, container_id: str) -> RuntimeContainer | None:
        found = self._cache.get(container_id)
        if found is not None or self._cache.missed_recently(container_id):
            return found
        try:
            reply = self._stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=container_id),
                                               timeout=self.timeout)
        except grpc.RpcError as exc:
            if _code(exc) != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND is an answer (not a container), not a failure
                self._failed(exc)
            self._cache.miss(container_id)
            return None
        except ValueError:  # the channel is closed: stop() was called
            return None
        c = _named(reply.status.metadata.name, reply.status.labels)
        if c is None:
            self._cache.miss(container_id)
            return None
        self._remember(container_id, c)
        return c

    # -- the background index -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"names-{self.runtime}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # Closing the channel ends every call on it at once, the event stream included,
        # so the thread is never left waiting on a runtime that says nothing.
        self._channel.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = Backoff(self.retry, 60.0)
        while not self._stop.is_set():
            try:
                self._follow()
                backoff.reset()  # it worked until the runtime stopped: start over soon
            except Exception as exc:  # RPC errors, a closed channel (stop()), an answer not shaped as expected
                if self._stop.is_set():
                    return
                self._failed(exc)
            backoff.wait(self._stop)

    def _follow(self) -> None:
        """List every container, then keep up with new ones until the runtime stops answering."""
        v = self._stub.Version(api_pb2.VersionRequest(), timeout=LIST_TIMEOUT)
        self.version = f"{v.runtime_name} {v.runtime_version}"
        if _one_queue_for_all_clients(v.runtime_name, v.runtime_version):
            self._list()
            self._poll(f"{self.version} gives each container event to one client only: reading them "
                       "would take them from the kubelet (Evented PLEG)")
            return
        # The stream is opened before the list, so a container created in between is in one or the other.
        events = self._stub.GetContainerEvents(api_pb2.GetEventsRequest())
        try:
            self._list()
            self.mode = "events"
            seen = False
            try:
                for ev in events:
                    seen = True
                    self._event(ev)
            except grpc.RpcError as exc:
                if _code(exc) != grpc.StatusCode.UNIMPLEMENTED or self._stop.is_set():
                    raise
                reason = f"{self.version} has no CRI container events (before containerd 1.7, CRI-O 1.26)"
            else:
                if seen or self._stop.is_set():
                    return  # a working stream ended (the runtime stops): start over after ``retry``
                reason = f"{self.version} ends the CRI event stream at once (CRI-O without enable_pod_events)"
        finally:
            events.cancel()
        self._poll(reason)

    def _poll(self, reason: str) -> None:
        if reason != self._poll_reason:
            log.info("%s at %s: listing its containers every %g s: %s", self.runtime, self.socket, self.poll, reason)
            self._poll_reason = reason
        self.mode = "polling"
        while not self._stop.wait(self.poll):
            self._list()

    def _list(self) -> None:
        reply = self._stub.ListContainers(api_pb2.ListContainersRequest(), timeout=LIST_TIMEOUT)
        for c in reply.containers:
            named = _named(c.metadata.name, c.labels)
            if c.id and named is not None:
                self._remember(c.id, named)
        self._connected(True)

    def _event(self, ev: api_pb2.ContainerEventResponse) -> None:
        # containerd sends the statuses of every container in the event's pod: remember them all.
        for st in ev.containers_statuses:
            named = _named(st.metadata.name, st.labels)
            if st.id and named is not None:
                self._remember(st.id, named)
        cid = ev.container_id
        if (cid and cid != ev.pod_sandbox_status.id  # a pod's own event: not a container to ask about
                and self._cache.get(cid) is None and ev.container_event_type != api_pb2.CONTAINER_DELETED_EVENT):
            self.lookup(cid)  # an event without its container's status: ask once

    # -- plumbing -----------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        code = _code(exc)
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return f"{code.name + ': ' if code is not None else ''}{detail}"


def _code(exc: BaseException) -> grpc.StatusCode | None:
    # The RpcError a call raises is also its grpc.Call, which carries the status code.
    return exc.code() if isinstance(exc, grpc.Call) else None


def _one_queue_for_all_clients(name: str, version: str) -> bool:
    """Whether the runtime's GetContainerEvents hands each event to ONE of its clients.

    containerd 1.7 (until 2.0: containerd#9661) and CRI-O 1.26 and 1.27 (until 1.28: cri-o#6838) feed
    every stream from one queue, so a second reader takes events from the kubelet's Evented PLEG.
    containerd 1.6 and CRI-O 1.25 have no events at all (UNIMPLEMENTED, or an empty stream).
    """
    m = re.match(r"v?(\d+)\.(\d+)", version)
    if m is None:
        return False
    release = (int(m[1]), int(m[2]))
    if name == "containerd":
        return (1, 7) <= release < (2, 0)
    if name == "cri-o":
        return (1, 26) <= release < (1, 28)
    return False


def _named(name: str, labels: Mapping[str, str]) -> RuntimeContainer | None:
    name = labels.get(CONTAINER_NAME_LABEL) or name
    if not name:
        return None
    return RuntimeContainer(name, namespace=labels.get(POD_NAMESPACE_LABEL) or None,
                            pod=labels.get(POD_NAME_LABEL) or None)
