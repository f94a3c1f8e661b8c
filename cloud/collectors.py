"""The collectors pool: one gRPC client (cloud/collector_client.py) per cluster of the
metadata store, made on first use and remade when the cluster's record changes."""

from __future__ import annotations

import threading

from pxo.cloud.collector_client import CollectorClient
from pxo.cloud.db import Cluster, Database
from pxo.cloud.errors import CollectorUnavailable, NotFound


class Collectors:
    """``preset``: a client made by the caller for the deploy-time collector (with the cloud's
    own TLS files), used for whichever plain cluster has its address."""

    def __init__(self, db: Database, *, timeout: float, preset: CollectorClient | None = None) -> None:
        self.db = db
        self.timeout = timeout
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[Cluster, CollectorClient]] = {}
        self._preset = preset

    def get(self, name: str | None) -> tuple[Cluster, CollectorClient]:
        """The named cluster (the default one for None or '') and its client; NotFound when there is none."""
        cluster = self.db.cluster(name)
        if cluster is None:
            if name:
                raise NotFound(f"no cluster named {name!r}; see GET /api/v1/clusters")
            raise NotFound("no default cluster is configured")
        with self._lock:
            known = self._clients.get(cluster.name)
            if known and known[0] == cluster:
                return cluster, known[1]
            if known and known[1] is not self._preset:
                known[1].close()
            client = self._client(cluster)
            self._clients[cluster.name] = (cluster, client)
            return cluster, client

    def _client(self, cluster: Cluster) -> CollectorClient:
        if cluster.tls:  # mutual TLS with the CA and client certificate of the cluster's record
            from pxo.common.tls import TlsError, material_channel_factory, material_from_pem

            try:
                m = material_from_pem(cluster.tls_ca, cluster.tls_cert, cluster.tls_key)
            except TlsError as exc:
                raise CollectorUnavailable(f"cluster {cluster.name!r}: TLS: {exc}") from None
            assert m is not None
            return CollectorClient(cluster.address, token=cluster.token, timeout=self.timeout,
                                   channel_factory=material_channel_factory(m, peer="collector"))
        if self._preset is not None and self._preset.address == cluster.address:
            return self._preset
        return CollectorClient(cluster.address, token=cluster.token, timeout=self.timeout)

    def close(self) -> None:
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()
