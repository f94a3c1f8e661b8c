"""pxo-collector: one per cluster. Knows the edges, plans queries, merges answers.

    python -m pxo.collector --listen 127.0.0.1:50700 --data-dir /var/lib/pxo/collector
"""

from __future__ import annotations

import logging
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from pxo.collector.auth import ClusterTokenInterceptor
from pxo.collector.executor import Executor
from pxo.collector.metrics import CollectorMetrics
from pxo.collector.registry import Registry
from pxo.collector.service import CollectorService
from pxo.common import sqlgate
from pxo.common.addr import split_hostport, write_addr_file
from pxo.common.settings import SettingsError, configure_logging, load_settings, wait_for_shutdown
from pxo.common.tls import (
    COLLECTOR_CALLERS,
    TlsError,
    TlsSettings,
    add_port,
    channel_factory,
    role_interceptors,
    serve_health,
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


def serve(settings: CollectorSettings) -> tuple[grpc.Server, str, Executor, health.HealthServicer,
                                                futures.ThreadPoolExecutor]:
    registry = Registry(expire_after=settings.expire_after, forget_after=settings.forget_after)
    # TlsError (a missing or unreadable file) is reported by main() in one line.
    executor = Executor(registry, edge_timeout=settings.edge_timeout, row_cap=settings.row_cap,
                        byte_cap=int(settings.byte_cap_mb * (1 << 20)),
                        channel_factory=channel_factory(settings.tls, peer="edge"))
    interceptors: list[grpc.ServerInterceptor[Any, Any]] = \
        [ClusterTokenInterceptor(settings.cluster_token)] if settings.cluster_token else []
    interceptors += role_interceptors(settings.tls, COLLECTOR_CALLERS)  # with TLS: edges register, the cloud asks
    rpc_pool = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="collector-rpc")
    server = grpc.server(rpc_pool, interceptors=interceptors)
    metrics = CollectorMetrics()
    metrics.watch(registry)
    pxo_pb2_grpc.add_CollectorServicer_to_server(
        CollectorService(registry, executor, heartbeat_interval=settings.heartbeat_interval, metrics=metrics),
        server)
    if settings.metrics:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        write_addr_file(settings.data_dir / "metrics.addr", metrics.serve(settings.metrics))
    healthz = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(healthz, server)
    host, _ = split_hostport(settings.listen)
    port = add_port(server, settings.listen, settings.tls)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen} (address in use?)")
    sqlgate.check("SELECT 1", ())  # the gate's parser database opens now, not in the first query
    server.start()
    healthz.set("", health_pb2.HealthCheckResponse.SERVING)
    healthz.set("pxo.v1.Collector", health_pb2.HealthCheckResponse.SERVING)
    return server, f"{host}:{port}", executor, healthz, rpc_pool


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(CollectorSettings, argv)
    except SettingsError as exc:
        print(f"pxo-collector: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        server, address, executor, healthz, rpc_pool = serve(settings)
        if settings.health_listen:
            health_server, health_address = serve_health(healthz, settings.health_listen)
            write_addr_file(settings.data_dir / "health.addr", health_address)
        write_addr_file(settings.data_dir / "collector.addr", address)
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
             f"; plain-text health checks on {health_address}" if settings.health_listen else "")
    wait_for_shutdown()
    healthz.enter_graceful_shutdown()
    server.stop(grace=2).wait()
    if settings.health_listen:
        health_server.stop(grace=None)
    # End the RPC threads now, so their per-thread DuckDB connections are freed while
    # the interpreter is whole, not during its teardown.
    rpc_pool.shutdown(wait=True, cancel_futures=True)
    executor.close()
    log.info("pxo collector stopped")
    return 0
