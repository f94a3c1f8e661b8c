"""pxo-collector: one per cluster. Knows the edges, plans queries, merges answers.

    python -m pxo.collector --listen 127.0.0.1:50700 --data-dir /var/lib/pxo/collector
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from pxo.collector.auth import ClusterTokenInterceptor
from pxo.collector.executor import Executor
from pxo.collector.metrics import CollectorMetrics
from pxo.collector.notify import Notifier
from pxo.collector.registry import Registry
from pxo.collector.service import CollectorService
from pxo.common import sqlgate
from pxo.common.addr import split_hostport, write_addr_file
from pxo.common.grpcserver import GrpcServer
from pxo.common.settings import SettingsError, configure_logging, load_settings, wait_for_shutdown
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


class CollectorSettings(TlsSettings):
    """Settings of the collector; each can be given as --flag or PXO_COLLECTOR_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="PXO_COLLECTOR_", cli_prog_name="pxo-collector",
                                      cli_kebab_case=True, cli_implicit_flags=True)

    listen: str = Field("127.0.0.1:50700", description="host:port to serve on (port 0: any free port)")
    data_dir: Path = Field(Path("/var/lib/pxo/collector"), description="where collector.addr is written")
    heartbeat_interval: float = Field(2.0, gt=0, description="seconds between edge heartbeats")
    expire_after: float = Field(6.0, gt=0, description="seconds of silence before an edge is marked down")
    forget_after: float = Field(24 * 3600, gt=0, description="seconds of silence before a down edge is forgotten")
    edge_timeout: float = Field(10.0, gt=0, description="default deadline of each edge's part of a query, seconds")
    row_cap: int = Field(100_000, gt=0, description="most rows an answer may hold")
    byte_cap_mb: float = Field(256, gt=0, description="most MiB of partial answers (Arrow IPC) one query may "
                               "gather from the edges; more fails the query with a clear error")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    metrics: str = Field("", description="host:port to serve Prometheus /metrics on (empty: off; port 0: any; "
                         "the bound address goes to metrics.addr)")
    cluster_token: str = Field("", description="token the cloud must send (gRPC metadata x-pxo-cluster-token); "
                               "empty: not checked. Prefer the env var PXO_COLLECTOR_CLUSTER_TOKEN to a flag")

    @field_validator("cluster_token")
    @classmethod
    def _token(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("a cluster token needs at least 16 characters")
        return v

    health_listen: str = Field("", description="host:port of a plain-text server answering only grpc.health.v1 "
                               "(for Kubernetes gRPC probes when TLS is on; empty: off)")
    notify_url: str = Field("", description="webhook to POST warnings to (Alertmanager's webhook JSON) when a "
                            "memory cgroup's estimated time to its limit (oom_risk) drops below --notify-threshold; "
                            "once per episode, and again when it ends (empty: off)")
    notify_threshold: float = Field(60.0, gt=0, description="seconds to the limit below which --notify-url is told")

    @field_validator("notify_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("--notify-url must be an http:// or https:// URL")
        return v

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics_hostport(cls, v: str) -> str:
        if v:
            split_hostport(v, what="metrics address")
        return v

    @field_validator("health_listen")
    @classmethod
    def _optional_hostport(cls, v: str) -> str:
        if v:
            split_hostport(v)
        return v


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
