"""Warnings before the kill: the collector watches every edge's oom_risk and posts to a
webhook (``--notify-url``) when a memory cgroup's estimated time to its limit drops below
a threshold (``--notify-threshold``, 60 s), once per episode, and again when the episode
ends. The body is Alertmanager's webhook format (version 4), so anything that takes
Alertmanager's notifications (a chat bridge, an incident tool, Alertmanager-compatible
receivers) takes pxo's.

An episode of one (node, cgroup) starts at the first estimate below the threshold and is
resolved when the estimate has been NULL or above twice the threshold for ``settle``
seconds (hysteresis: an estimate that wobbles around the threshold does not flap), when
the cgroup's rows stop (it was killed or removed), or when its node stops answering.
A webhook that fails is retried on the next round; an alert is never sent twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pxo.common.timeutil import iso, utc_now
from pxo.v1 import pxo_pb2

log = logging.getLogger(__name__)

ALERT = "PxoOomImminent"
QUERY = ("oom_risk | last {look}s | project time, node, cgroup_path, namespace, pod, container, eta_seconds, "
         "growth_bytes_per_s, nonreclaimable_bytes, limit_bytes")
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "no end yet"


@dataclass
class Episode:
    labels: dict[str, str]
    started: dt.datetime
    annotations: dict[str, str]
    calm_since: dt.datetime | None = None
    sent_firing: bool = False
    ended: dt.datetime | None = None


@dataclass
class Notifier:
    """Polls ``run_query`` (the collector's own executor) every ``interval`` seconds."""

    url: str
    run_query: Callable[[pxo_pb2.QueryRequest], Iterable[pxo_pb2.QueryReply]]
    threshold: float = 60.0
    interval: float = 2.0
    settle: float = 10.0
    timeout: float = 5.0
    external_url: str = ""
    clock: Callable[[], dt.datetime] = utc_now
    post: Callable[[str, dict[str, Any]], None] | None = None
    episodes: dict[tuple[str, str], Episode] = field(default_factory=dict)
    sent: int = 0
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.round()
            except Exception:  # a bad round must not end the warnings
                log.exception("the oom_risk notification round failed")

    # -- one round ------------------------------------------------------------------------

    def latest(self) -> tuple[dict[tuple[str, str], dict[str, Any]], set[str]]:
        """The newest oom_risk row of each (node, cgroup), and the nodes that did not answer."""
        look = int(max(10, 3 * self.interval + self.settle))
        req = pxo_pb2.QueryRequest(text=QUERY.format(look=look), syntax=pxo_pb2.SYNTAX_PIPE)
        batches: list[Any] = []
        schema = None
        down: set[str] = set()
        from pxo.common import arrowipc

        for reply in self.run_query(req):
            part = reply.WhichOneof("part")
            if part == "batch":
                schema, bs = arrowipc.decode(reply.batch.ipc_stream)
                batches.extend(bs)
            elif part == "summary":
                down = {n.node for n in reply.summary.nodes
                        if n.state not in (pxo_pb2.NodeStatus.OK, pxo_pb2.NodeStatus.SKIPPED)}
            elif part == "error":
                raise RuntimeError(f"oom_risk query refused: {reply.error.message}")
        rows = pa.Table.from_batches(batches, schema=schema).to_pylist() if schema is not None else []
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            key = (r["node"], r["cgroup_path"])
            if key not in newest or r["time"] > newest[key]["time"]:
                newest[key] = r
        return newest, down

    def round(self) -> None:
        now = self.clock()
        newest, down = self.latest()
        for key, r in newest.items():
            eta = r["eta_seconds"]
            ep = self.episodes.get(key)
            if eta is not None and eta < self.threshold:
                if ep is None or ep.ended is not None:
                    ep = self.episodes[key] = Episode(_labels(r), r["time"], {})
                ep.calm_since = None
                ep.annotations = _annotations(r, self.threshold)
            elif ep is not None and ep.ended is None and (eta is None or eta > 2 * self.threshold):
                ep.calm_since = ep.calm_since or now
                if (now - ep.calm_since).total_seconds() >= self.settle:
                    ep.ended = now
        for key, ep in self.episodes.items():
            if ep.ended is None and (key not in newest or key[0] in down):
                ep.ended = now  # killed, removed, or its node is gone: the episode is over either way
                why = ("its node stopped answering" if key[0] in down
                       else "its cgroup has no new rows (killed or removed)")
                ep.annotations = {**ep.annotations, "resolution": why}
        self._send(now)

    def _send(self, now: dt.datetime) -> None:
        firing = [ep for ep in self.episodes.values() if ep.ended is None and not ep.sent_firing]
        resolved = [ep for ep in self.episodes.values() if ep.ended is not None and ep.sent_firing]
        unsent = [ep for ep in self.episodes.values() if ep.ended is not None and not ep.sent_firing]
        for ep in unsent:  # began and ended between two rounds' posts: nothing worth a page
            self.episodes = {k: v for k, v in self.episodes.items() if v is not ep}
        for status, eps in (("firing", firing), ("resolved", resolved)):
            if not eps:
                continue
            body = self.body(status, eps)
            try:
                (self.post or self._post)(self.url, body)
            except Exception as exc:  # retried next round
                self.failures += 1
                log.warning("cannot post the %s notification of %d alert(s) to %s: %s", status, len(eps), self.url,
                            exc)
                continue
            self.sent += 1
            for ep in eps:
                ep.sent_firing = True
            if status == "resolved":
                self.episodes = {k: v for k, v in self.episodes.items() if v.ended is None}

    def body(self, status: str, eps: list[Episode]) -> dict[str, Any]:
        """Alertmanager's webhook payload (version 4) for these episodes."""
        alerts: list[dict[str, Any]] = [{
            "status": "resolved" if ep.ended is not None else "firing",
            "labels": ep.labels, "annotations": ep.annotations,
            "startsAt": iso(ep.started), "endsAt": iso(ep.ended) if ep.ended else ZERO_TIME,
            "generatorURL": self.external_url, "fingerprint": _fingerprint(ep.labels),
        } for ep in eps]
        return {
            "version": "4", "groupKey": f'{{}}:{{alertname="{ALERT}"}}', "truncatedAlerts": 0, "status": status,
            "receiver": "pxo", "groupLabels": {"alertname": ALERT},
            "commonLabels": _common(a["labels"] for a in alerts),
            "commonAnnotations": _common(a["annotations"] for a in alerts),
            "externalURL": self.external_url, "alerts": alerts,
        }

    def _post(self, url: str, body: dict[str, Any]) -> None:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pxo-collector"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            resp.read()


def _labels(r: dict[str, Any]) -> dict[str, str]:
    labels = {"alertname": ALERT, "severity": "warning", "node": r["node"], "cgroup_path": r["cgroup_path"]}
    for k in ("namespace", "pod", "container"):
        if r.get(k):
            labels[k] = r[k]
    return labels


def _annotations(r: dict[str, Any], threshold: float) -> dict[str, str]:
    mib = 1 << 20
    who = "/".join(r[k] for k in ("namespace", "pod", "container") if r.get(k)) or r["cgroup_path"]
    return {
        "summary": f"{who} will reach its memory limit in about {r['eta_seconds']:.0f} s",
        "description": (f"{who} on node {r['node']} holds {r['nonreclaimable_bytes'] / mib:.0f} MiB that reclaim "
                        f"cannot free, of a {r['limit_bytes'] / mib:.0f} MiB limit, growing "
                        f"{r['growth_bytes_per_s'] / mib:.2f} MiB/s: the kernel will OOM-kill in it in about "
                        f"{r['eta_seconds']:.0f} s "
                        f"(warning below {threshold:.0f} s). `pxo query \"oom_risk | where cgroup_path == "
                        f"'{r['cgroup_path']}' | last 10m\"` shows the climb."),
        "eta_seconds": f"{r['eta_seconds']:.1f}",
        "growth_bytes_per_s": f"{r['growth_bytes_per_s']:.0f}",
    }


def _fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


def _common(dicts: Iterable[dict[str, str]]) -> dict[str, str]:
    ds = list(dicts)
    if not ds:
        return {}
    return {k: v for k, v in ds[0].items() if all(d.get(k) == v for d in ds[1:])}
