"""One way to stand up a pxo gRPC server (the edge's and the collector's):

- a thread pool, the interceptors (role checks with TLS, the cluster token);
- the component's servicer, and grpc.health.v1 beside it, SERVING once started;
- the port (TLS or plain text; ``host:0`` binds any free port) and the address it bound,
  written to ``<data_dir>/<name>.addr`` for whoever waits for it;
- with ``health_listen``, a second, plain-text server that answers only the health
  service (Kubernetes' gRPC probes cannot do TLS), its address in ``health.addr``;
- ``stop()``: health NOT_SERVING first, then the server, then the pool's threads (their
  per-thread DuckDB connections are freed while the interpreter is whole).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pxo.common.addr import split_hostport, write_addr_file
from pxo.common.tls import TlsFiles, add_port, serve_health

log = logging.getLogger(__name__)


class GrpcServer:
    def __init__(self, name: str, *, listen: str, tls: TlsFiles | None, service_names: Sequence[str],
                 add_servicers: Callable[[grpc.Server], None],
                 interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (), max_workers: int = 8) -> None:
        """``add_servicers(server)`` registers the component's servicers; ``service_names``
        are their full names (pxo.v1.Edge), each reported SERVING by the health service."""
        self.name = name
        self.listen = listen
        self.tls = tls
        self.service_names = tuple(service_names)
        self.pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{name}-rpc")
        self.server = grpc.server(self.pool, interceptors=list(interceptors))
        add_servicers(self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = ""
        self.health_address = ""
        self._health_server: grpc.Server | None = None

    def start(self, *, data_dir: Path | None = None, health_listen: str = "") -> str:
        """Bind, start, report SERVING; returns the bound host:port. OSError when the address
        cannot be had, TlsError when a certificate file cannot be read."""
        host, _ = split_hostport(self.listen)
        port = add_port(self.server, self.listen, self.tls)
        if port == 0:
            raise OSError(f"cannot listen on {self.listen} (address in use?)")
        self.address = f"{host}:{port}"
        self.server.start()
        for service in ("", *self.service_names):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if health_listen:
            self._health_server, self.health_address = serve_health(self.health, health_listen)
            if data_dir is not None:
                write_addr_file(data_dir / "health.addr", self.health_address)
        return self.address

    def publish(self, data_dir: Path, address: str | None = None) -> None:
        """Write ``<name>.addr`` (last: whoever waits for it finds the other files written)."""
        write_addr_file(data_dir / f"{self.name}.addr", address or self.address)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace=grace).wait()
        if self._health_server is not None:
            self._health_server.stop(grace=None)
        self.pool.shutdown(wait=True, cancel_futures=True)
