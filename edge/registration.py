"""Keeps the edge known to its collector: register, then heartbeat; register
again when the collector says it does not know us (it restarted)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from pxo.v1 import pxo_pb2, pxo_pb2_grpc

log = logging.getLogger(__name__)


class Registration:
    def __init__(self, *, collector: str, node_info: Callable[[], pxo_pb2.NodeInfo],
                 channel_factory: Callable[[str], grpc.Channel] = grpc.insecure_channel,
                 interval: float = 2.0) -> None:
        self.collector = collector
        self._node_info = node_info
        self._channel = channel_factory(collector)
        self._stub = pxo_pb2_grpc.CollectorStub(self._channel)
        self.interval = interval
        self.registered = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)
        self._complained = False

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        known = False
        while not self._stop.is_set():
            try:
                info = self._node_info()
                if not known:
                    reply = self._stub.Register(pxo_pb2.RegisterRequest(node=info), timeout=5)
                    if reply.heartbeat_interval_ms:
                        self.interval = reply.heartbeat_interval_ms / 1000
                    known = True
                    self.registered.set()
                    log.info("registered with collector %s as node %s", self.collector, info.node)
                else:
                    hb = self._stub.Heartbeat(
                        pxo_pb2.HeartbeatRequest(node=info.node, address=info.address, sources=info.sources),
                        timeout=5,
                    )
                    known = hb.known
                self._complained = False
            except grpc.RpcError as exc:
                known = False
                if not self._complained:  # one line per outage, not one per attempt
                    # with TLS, a refused or unverifiable certificate shows here as UNAVAILABLE
                    # with the handshake failure in the details
                    log.warning("collector %s unreachable (%s: %s); retrying every %.0f s",
                                self.collector, exc.code().name, exc.details(), self.interval)
                    self._complained = True
            except Exception:  # never the thread: a node that stops heartbeating is taken for dead
                known = False
                if not self._complained:
                    log.exception("cannot register with collector %s; retrying every %.0f s", self.collector,
                                  self.interval)
                    self._complained = True
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._channel.close()
