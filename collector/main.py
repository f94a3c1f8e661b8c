"""pxo-collector: one per cluster. Knows the edges, plans queries, merges answers.

    python -m pxo.collector --listen 127.0.0.1:50700 --data-dir /var/lib/pxo/collector
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, ClassVar

import grpc

from pxo.collector.auth import ClusterTokenInterceptor
from pxo.collector.executor import Executor
from pxo.collector.metrics import CollectorMetrics
from pxo.collector.notify import Notifier
from pxo.collector.registry import Registry
from pxo.collector.service import CollectorService
from pxo.common import sqlgate
from pxo.common.addr import hostport_check, write_addr_file
from pxo.common.grpcserver import GrpcServer
from pxo.common.settings import SettingsError, configure_logging, load_settings, setting, wait_for_shutdown
from pxo.common.tls import (
    COLLECTOR_CALLERS,
    TlsError,
    TlsSettings,
    channel_factory,
    role_interceptors,
)
from pxo.common.version import pxo_version
from pxo.v1 import pxo_pb2_grpc

log = logging.getLogger("pxo.collector")


def _token(v: str) -> str:
    if v and len(v) < 16:
        raise ValueError("a cluster token needs at least 16 characters")
    return v


def _url(v: str) -> str:
    if v and not v.startswith(("http://", "https://")):
        raise ValueError("--notify-url must be an http:// or https:// URL")
    return v


@dataclasses.dataclass(frozen=True)
class CollectorSettings(TlsSettings):
    """Settings of the collector; each can be given as --flag or PXO_COLLECTOR_<NAME>."""

    ENV_PREFIX: ClassVar[str] = "PXO_COLLECTOR_"
    PROG: ClassVar[str] = "pxo-collector"

    listen: str = setting("127.0.0.1:50700", check=hostport_check(),
                          help="host:port to serve on (port 0: any free port)")
    data_dir: Path = setting(Path("/var/lib/pxo/collector"), help="where collector.addr is written")
    heartbeat_interval: float = setting(2.0, gt=0, help="seconds between edge heartbeats")
    expire_after: float = setting(6.0, gt=0, help="seconds of silence before an edge is marked down")
    forget_after: float = setting(24 * 3600, gt=0, help="seconds of silence before a down edge is forgotten")
    edge_timeout: float = setting(10.0, gt=0, help="default deadline of each edge's part of a query, seconds")
    row_cap: int = setting(100_000, gt=0, help="most rows an answer may hold")
    byte_cap_mb: float = setting(256, gt=0, help="most MiB of partial answers (Arrow IPC) one query may "
                                 "gather from the edges; more fails the query with a clear error")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    metrics: str = setting("", check=hostport_check(what="metrics address", optional=True),
                           help="host:port to serve Prometheus /metrics on (empty: off; port 0: any; "
                                "the bound address goes to metrics.addr)")
    cluster_token: str = setting("", check=_token,
                                 help="token the cloud must send (gRPC metadata x-pxo-cluster-token); "
                                      "empty: not checked. Prefer the env var PXO_COLLECTOR_CLUSTER_TOKEN to a flag")
    health_listen: str = setting("", check=hostport_check(optional=True),
                                 help="host:port of a plain-text server answering only grpc.health.v1 "
                                      "(for Kubernetes gRPC probes when TLS is on; empty: off)")
    notify_url: str = setting("", check=_url,
                              help="webhook to POST warnings to (Alertmanager's webhook JSON) when a memory "
                                   "cgroup's estimated time to its limit (oom_risk) drops below "
                                   "--notify-threshold; once per episode, and again when it ends (empty: off)")
    notify_threshold: float = setting(60.0, gt=0, help="seconds to the limit below which --notify-url is told")


class Collector:
    """The running collector: the registry of edges, the executor, the gRPC server."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.registry = Registry(expire_after=settings.expire_after, forget_after=settings.forget_after)
        # TlsError (a missing or unreadable file) is reported by main() in one line.
        self.executor = Executor(self.registry, edge_timeout=settings.edge_timeout, row_cap=settings.row_cap,
                                 byte_cap=int(settings.byte_cap_mb * (1 << 20)),
                                 channel_factory=channel_factory(settings.tls, peer="edge"))
        interceptors: list[grpc.ServerInterceptor[Any, Any]] = \
            [ClusterTokenInterceptor(settings.cluster_token)] if settings.cluster_token else []
        interceptors += role_interceptors(settings.tls, COLLECTOR_CALLERS)  # with TLS: edges register, the cloud asks
        self.metrics = CollectorMetrics()
        self.metrics.watch(self.registry)
        self.notifier = Notifier(settings.notify_url, self.executor.run, threshold=settings.notify_threshold) \
            if settings.notify_url else None
        service = CollectorService(self.registry, self.executor, heartbeat_interval=settings.heartbeat_interval,
                                   metrics=self.metrics)
        self.grpc = GrpcServer(
            "collector", listen=settings.listen, tls=settings.tls, service_names=["pxo.v1.Collector"],
            add_servicers=lambda server: pxo_pb2_grpc.add_CollectorServicer_to_server(service, server),
            interceptors=interceptors, max_workers=32)

    def start(self) -> str:
        """Serve; returns the bound address, written to collector.addr last. OSError or TlsError
        when the address or a certificate cannot be had."""
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.metrics:
            write_addr_file(data_dir / "metrics.addr", self.metrics.serve(self.settings.metrics))
        sqlgate.check("SELECT 1", ())  # the gate's parser database opens now, not in the first query
        address = self.grpc.start(data_dir=data_dir, health_listen=self.settings.health_listen)
        if self.notifier is not None:
            self.notifier.start()
        self.grpc.publish(data_dir)
        return address

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
        self.grpc.stop()  # its RPC threads end here, their DuckDB connections with them
        self.executor.close()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(CollectorSettings, argv)
    except SettingsError as exc:
        print(f"pxo-collector: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        collector = Collector(settings)
        address = collector.start()
    except OSError as exc:
        print(f"pxo-collector: error: {exc}", file=sys.stderr)
        return 1
    except TlsError as exc:
        print(f"pxo-collector: error: TLS: {exc}", file=sys.stderr)
        return 1
    log.info("pxo collector %s serving on %s (cluster token %s)", pxo_version(), address,
             "checked" if settings.cluster_token else "not configured: cloud calls are not authenticated")
    tls = settings.tls
    log.info("gRPC %s%s", f"with mutual TLS (cluster CA {tls.ca})" if tls else
             "in plain text: edges and the cloud are not authenticated by certificate",
             f"; plain-text health checks on {collector.grpc.health_address}" if settings.health_listen else "")
    wait_for_shutdown()
    collector.stop()
    log.info("pxo collector stopped")
    return 0
