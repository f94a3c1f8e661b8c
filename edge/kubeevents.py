"""Each OOM kill of a pod's process becomes a Kubernetes Event on that pod.

`kubectl describe pod` and `kubectl get events` then show what the kubelet cannot:
kills of a container's child processes (the kubelet reports OOMKilled only when the
container's main process dies: kubernetes #50632, #78973) and kills between two of
its looks. The reason is pxo's own (``PxoOOMKill``), never the kubelet's
``OOMKilled`` or node-problem-detector's ``OOMKilling``; the message names the
victim, whether it was the container's main process, the limit, and the verdict of
`pxo explain` in one line.

Repeated kills aggregate as the kubelet's events do: one Event per (pod, container,
reason), its ``count`` and ``lastTimestamp`` patched on every new kill. The edge needs
``create`` and ``patch`` on ``events`` (deploy/kubernetes/10-rbac.yaml), nothing more.

A kill is posted ``delay`` seconds after its row (so that the whole group kill and the
minutes before it are committed and the verdict has them), from one background
thread; the API server being down costs only the events, never a row.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pxo.edge.kubeclient import KubeClient, KubeError
from pxo.edge.sources.base import Sink

log = logging.getLogger(__name__)

REASON = "PxoOOMKill"
COMPONENT = "pxo-edge"


@dataclass
class _Posted:
    name: str
    count: int
    first: str


def message(row: dict[str, Any], verdict: str) -> str:
    """One line: who was killed, main process or not, the limit, why."""
    main = {1: "the container's main process"}.get(row.get("ns_pid") or 0, "not the main process"
                                                    if row.get("ns_pid") else "main process unknown")
    limit = row.get("memcg_limit_bytes")
    where = f"at its {limit / (1 << 20):.0f} MiB limit" if limit else "with no limit recorded"
    return (f"OOM-killed {row.get('comm')} (pid {row.get('pid')}, {main}) {where} "
            f"[{row.get('constraint') or 'why unknown'}]: {verdict}")[:1024]


class PodEvents:
    """Posts and aggregates the Events; ``explain(row)`` gives the verdict sentence."""

    def __init__(self, *, node: str, client: KubeClient, explain: Callable[[dict[str, Any]], str],
                 delay: float = 1.5, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.node = node
        self._client = client
        self._explain = explain
        self.delay = delay
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._posted: dict[tuple[str, str, str], _Posted] = {}
        self._thread = threading.Thread(target=self._run, name="pod-events", daemon=True)
        self.sent = 0
        self.errors = 0
        self.last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def offer(self, row: dict[str, Any]) -> None:
        """A committed oom_events row (with its attribution); only a pod's become Events."""
        if row.get("namespace") and row.get("pod"):
            try:
                self._queue.put_nowait(dict(row))
            except queue.Full:
                self.errors += 1

    def _run(self) -> None:
        stop = threading.Event()
        while True:
            row = self._queue.get()
            if row is None:
                return
            stop.wait(self.delay)
            try:
                self._post(row)
                self.sent += 1
            except Exception as exc:  # the API server, RBAC, a bad pod: one line, then go on
                self.errors += 1
                if str(exc) != self.last_error:
                    log.warning("cannot post the Kubernetes Event for the OOM kill of pid %s in %s/%s: %s",
                                row.get("pid"), row.get("namespace"), row.get("pod"), exc)
                self.last_error = str(exc)

    def _post(self, row: dict[str, Any]) -> None:
        ns, pod, container = row["namespace"], row["pod"], row.get("container") or ""
        try:
            verdict = self._explain(row)
        except Exception as exc:  # the event matters more than its verdict
            verdict = f"no verdict ({exc})"
        text = message(row, verdict)
        now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        key = (ns, pod, container)
        prev = self._posted.get(key)
        if prev is not None:
            body = {"count": prev.count + 1, "lastTimestamp": now, "message": text}
            try:
                self._client.request("PATCH", f"/api/v1/namespaces/{_q(ns)}/events/{_q(prev.name)}", body=body,
                                     content_type="application/merge-patch+json")
                prev.count += 1
                return
            except KubeError as exc:  # gone (events expire after an hour): make a new one
                if exc.status != 404:
                    raise
        uid = row.get("pod_uid") or self._pod_uid(ns, pod)  # the cgroup path names it
        name = f"{pod}.{secrets.token_hex(8)}"
        involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": ns}
        if uid:
            involved["uid"] = uid
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        event: Any = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/part-of": "pxo"}},
            "involvedObject": involved, "reason": REASON, "message": text, "type": "Warning",
            "source": {"component": COMPONENT, "host": self.node}, "reportingComponent": "pxo.dev/edge",
            "reportingInstance": self.node, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._client.request("POST", f"/api/v1/namespaces/{_q(ns)}/events", body=event)
        self._posted[key] = _Posted(name, 1, now)

    def _pod_uid(self, ns: str, pod: str) -> str | None:
        try:
            found = self._client.request("GET", f"/api/v1/namespaces/{_q(ns)}/pods/{_q(pod)}")
            return str(found["metadata"]["uid"])
        except (KubeError, KeyError, TypeError):  # the pod is gone already: the event still names it
            return None


class EventTap:
    """A sink between the attribution and the store that also hands each oom_events row,
    attributed, to ``offer`` (PodEvents.offer)."""

    def __init__(self, sink: Sink, offer: Callable[[dict[str, Any]], None]) -> None:
        self._sink = sink
        self._offer = offer

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        self._sink.append(table, row)
        if table == "oom_events":
            self._offer(dict(row))


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")
