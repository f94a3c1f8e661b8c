"""pxo-edge: one per node. Loads the sources, keeps the store, answers fragments.

    python -m pxo.edge --data-dir /var/lib/pxo/edge --collector 127.0.0.1:50700
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from pxo.common.addr import hostport_check, write_addr_file
from pxo.common.grpcserver import GrpcServer
from pxo.common.settings import SettingsError, configure_logging, load_settings, setting, wait_for_shutdown
from pxo.common.tls import (
    EDGE_CALLERS,
    TlsError,
    TlsSettings,
    channel_factory,
    role_interceptors,
)
from pxo.common.version import pxo_version
from pxo.edge import explain
from pxo.edge.attribution import AttributingSink, Attributor, KubePodWatcher
from pxo.edge.errors import EdgeError
from pxo.edge.kubeevents import EventTap, PodEvents
from pxo.edge.metrics import EdgeCollector, EdgeMetrics
from pxo.edge.pins import PIN_ROOT
from pxo.edge.registration import Registration
from pxo.edge.runtimes import RUNTIME_APIS, runtime_indexes
from pxo.edge.service import EdgeService
from pxo.edge.sources import DEFAULT_SOURCES, OPT_IN, SOURCES, all_tables, build_sources
from pxo.edge.sources.base import Sink, Source, SourceContext, SourceStatus
from pxo.edge.store import Store
from pxo.edge.watchdog import EXIT_STALLED, Stall, Watchdog
from pxo.v1 import pxo_pb2_grpc

log = logging.getLogger("pxo.edge")


def _known_sources(v: list[str]) -> list[str]:
    v = [s for s in v if s]
    unknown = [s for s in v if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    return v


@dataclasses.dataclass(frozen=True)
class EdgeSettings(TlsSettings):
    """Settings of the edge; each can be given as --flag or PXO_EDGE_<NAME>."""

    ENV_PREFIX: ClassVar[str] = "PXO_EDGE_"
    PROG: ClassVar[str] = "pxo-edge"

    node: str = setting(default_factory=socket.gethostname,
                        help="this node's name (in Kubernetes: spec.nodeName via the downward API)")
    data_dir: Path = setting(Path("/var/lib/pxo/edge"), help="directory of the DuckDB store")
    pod_events: bool = setting(True, help="post each OOM kill of a pod's process as a Kubernetes Event on "
                               "the pod (reason PxoOOMKill; needs create and patch on events)")
    bpf_pins: Path = setting(PIN_ROOT, help="bpffs directory where the eBPF programs, their maps and ring "
                             "buffers are pinned, so that they keep capturing while the edge restarts (in "
                             "Kubernetes: on the host's /sys/fs/bpf; `pxo delete` removes it)")
    listen: str = setting("127.0.0.1:50701", check=hostport_check(),
                          help="host:port to serve on (port 0: any free port)")
    advertise: str = setting("", check=hostport_check(optional=True),
                             help="host:port the collector should dial (default: the bound address)")
    collector: str = setting("", check=hostport_check(what="collector address", optional=True),
                             help="collector host:port to register with (empty: stand alone)")
    sources: list[str] = setting(default_factory=lambda: list(DEFAULT_SOURCES), check=_known_sources,
                                 help=f"sources to run (default: all but the opt-in {', '.join(sorted(OPT_IN))}), "
                                      f"from: {', '.join(SOURCES)}")
    require_bpf: bool = setting(False, help="exit when an eBPF program cannot load, instead of running "
                                            "degraded on the kernel log and cgroupfs")
    flush_interval: float = setting(0.5, gt=0, le=1.0, help="seconds between store commits")
    retention_days: float = setting(30.0, gt=0, help="days each table keeps its rows")
    retention_days_by_table: dict[str, float] = setting(
        default_factory=dict, help='per-table overrides, e.g. {"alloc_rate": 7}')
    max_store_mb: int = setting(1024, gt=0, help="most the store may hold, MiB; the oldest rows go first")
    store_threads: int = setting(1, ge=1, le=64, help="DuckDB threads for the store's queries and ingest: "
                                 "1 keeps a query to one core of the node (more: faster large scans, more CPU "
                                 "spent waiting under load; see docs/benchmarks.md)")
    store_memory_mb: int = setting(32, ge=32, help="memory DuckDB may use for the store and queries, MiB: "
                                                   "its cache of the store's blocks stays within it, and "
                                                   "bigger queries spill to disk (more: faster big queries, "
                                                   "an edge that grows with its store; docs/benchmarks.md)")
    metrics: str = setting("", check=hostport_check(what="metrics address", optional=True),
                           help="host:port to serve Prometheus /metrics on (empty: off; port 0: any)")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR")
    runtime_dir: Path = setting(Path("/run"), help="the host's /run, where container runtimes keep their API "
                                "sockets (containerd, CRI-O, Docker, Podman): container names come from them "
                                "(in a container: where the host's /run is mounted)")
    health_listen: str = setting("", check=hostport_check(optional=True),
                                 help="host:port of a plain-text server answering only grpc.health.v1 "
                                      "(for Kubernetes gRPC probes when TLS is on; empty: off)")
    stall_seconds: float = setting(180.0, gt=0, help="a source or the store's writer busy with one piece of work "
                                   "for longer than this has hung: the edge reports NOT_SERVING and exits "
                                   f"(status {EXIT_STALLED}) to be started again, losing nothing "
                                   "(edge/watchdog.py)")


class Edge:
    """The running edge: store, sources, gRPC server, registration."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self._started = time.time()  # this edge process's start: `pxo nodes`' uptime, the metrics, probe status
        unknown = set(settings.retention_days_by_table) - {t.name for t in all_tables()}
        if unknown:
            raise EdgeError(f"--retention-days-by-table names unknown tables: {', '.join(sorted(unknown))}")
        self.store = Store(
            settings.data_dir / "edge.duckdb", all_tables(), flush_interval=settings.flush_interval,
            retention=dt.timedelta(days=settings.retention_days),
            retention_by_table={k: dt.timedelta(days=v) for k, v in settings.retention_days_by_table.items()},
            max_bytes=settings.max_store_mb << 20, memory_limit=f"{settings.store_memory_mb}MB",
            threads=settings.store_threads)
        self.pods = KubePodWatcher.from_environment(settings.node)
        self.runtimes = runtime_indexes(settings.runtime_dir, factories=RUNTIME_APIS)
        self.attributor = Attributor(pods=self.pods, runtimes=self.runtimes)
        self.pod_events = PodEvents(node=settings.node, client=self.pods.client,
                                    explain=self.verdict_line) if self.pods and settings.pod_events else None
        inner: Sink = EventTap(self.store, self.pod_events.offer) if self.pod_events else self.store
        sink = AttributingSink(inner, self.attributor, self.store.tables.values())
        ctx = SourceContext(sink=sink, oom_recorded=self.store.oom_kill_recorded, statuses=self.extra_status,
                            pin_root=settings.bpf_pins)
        self.sources: list[Source] = build_sources(settings.sources, ctx)
        self.address = ""
        self.metrics = EdgeMetrics()
        self.metrics.watch(EdgeCollector(node=settings.node, sources=self.sources, store=self.store,
                                         extra_status=self.extra_status, attribute=self.attributor.attribute,
                                         started=self._started))
        self.service = EdgeService(node=settings.node, store=self.store, sources=self.sources,
                                   address=lambda: self.address, extra_status=self.extra_status,
                                   metrics=self.metrics, started=self._started)
        self.grpc = GrpcServer(
            "edge", listen=settings.listen, tls=settings.tls, service_names=["pxo.v1.Edge"],
            add_servicers=lambda server: pxo_pb2_grpc.add_EdgeServicer_to_server(self.service, server),
            # with TLS, only the collector's certificate may ask this node anything
            interceptors=role_interceptors(settings.tls, EDGE_CALLERS))
        self.registration: Registration | None = None
        self.watchdog = Watchdog(lambda: [self.store.writer_busy, *(s.busy for s in self.sources)],
                                 stall_after=settings.stall_seconds, on_stall=self.stalled)

    def verdict_line(self, row: dict[str, Any]) -> str:
        """`pxo explain`'s verdict on one oom_events row, in one line (the pod's Event)."""
        found = explain.find(self.store, row.get("oom_id") or str(row["pid"]))
        if found is None:
            return "no verdict (the kill is not in the store)"
        return " ".join(v.sentence for v in explain.explain(self.store, found).verdicts)

    def extra_status(self) -> list[SourceStatus]:
        """The store's and the pod watcher's status, beside the sources'."""
        out = [self.store.status()]
        if self.pods is not None:
            st = self.pods.status
            detail = "" if st["connected"] else (st["last_error"] or "connecting to the API server")
            out.append(SourceStatus("kubernetes", "running" if st["connected"] else "degraded", detail,
                                    st["pods"], st["errors"], self._started))
        for runtime, index in self.runtimes.items():
            rs = index.status
            out.append(SourceStatus(f"runtime:{runtime}", "running" if rs.connected else "degraded",
                                    "" if rs.connected else rs.last_error or "connecting", rs.names, rs.errors,
                                    rs.since))
        return out

    def start(self) -> None:
        tls = self.settings.tls
        try:  # before any source starts: a missing certificate is one line, and nothing to undo
            dial = channel_factory(tls, peer="collector")  # reads and checks the three files
        except TlsError as exc:
            raise EdgeError(f"TLS: {exc}") from None
        self.store.start()
        self.attributor.start()
        self._await_pod_index()
        if self.pod_events is not None:
            self.pod_events.start()
        for s in self.sources:
            try:
                s.start()
            except EdgeError as exc:  # its status says why; the other sources still run
                log.warning("source %s cannot run: %s", s.name, exc)
        probes = [s for s in self.sources if s.name != "probe_status"]
        problems = [s for s in probes if s.status.state in ("failed", "degraded")]
        failed = [s for s in problems if s.status.state == "failed"]
        if problems and (self.settings.require_bpf or (failed and len(failed) == len(probes))):
            message = problems[0].status.detail
            for s in self.sources:
                s.stop()
            self.store.close()
            raise EdgeError(message)
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what starting took and freed, back to the system
        if problems:
            log.warning("edge is DEGRADED: %s", "; ".join(f"{s.name}: {s.status.detail}" for s in problems))
        if self.settings.metrics:
            write_addr_file(self.settings.data_dir / "metrics.addr", self.metrics.serve(self.settings.metrics))
        try:
            bound = self.grpc.start(data_dir=self.settings.data_dir, health_listen=self.settings.health_listen)
        except TlsError as exc:
            raise EdgeError(f"TLS: {exc}") from None
        except OSError as exc:
            raise EdgeError(str(exc)) from None
        self.address = self.settings.advertise or bound
        self.grpc.publish(self.settings.data_dir, self.address)
        if self.settings.collector:
            self.registration = Registration(collector=self.settings.collector,
                                             node_info=self.service.node_info, channel_factory=dial)
            self.registration.start()
        self.watchdog.start()
        running = ", ".join(f"{s.name} ({s.status.state})" for s in self.sources) or "none"
        log.info("pxo edge %s on node %s: serving on %s, store %s, sources: %s",
                 pxo_version(), self.settings.node, self.address, self.store.path, running)
        log.info("gRPC %s", f"with mutual TLS (cluster CA {tls.ca})" if tls else
                 "in plain text: anyone who reaches the port may query this node")

    def _await_pod_index(self, timeout: float = 10.0) -> None:
        """Let the pod watcher list this node's pods before the sources start, so the first rows
        (the backlog the pinned programs kept among them) carry pod names: the programs capture
        meanwhile. Bounded: an unreachable API server only delays the start by ``timeout``."""
        if self.pods is None:
            return
        end = time.monotonic() + timeout
        while not self.pods.status["connected"] and time.monotonic() < end:
            time.sleep(0.05)

    STALL_GRACE = 20.0  # seconds a stalled edge gives the rest of its stop before it exits anyway

    def stalled(self, stall: Stall) -> None:
        """The watchdog found a loop that hangs: report NOT_SERVING, stop what can be stopped
        (committing what the sources handed over, unless the writer is what hangs) and exit, to
        be started again as after a crash. Never returns."""
        log.critical("%s has made no progress for %.0f s (--stall-seconds %g): the edge exits with status %d "
                     "to be started again; the store keeps what it committed and the pinned programs keep "
                     "capturing meanwhile. It is stuck here:\n%s", stall.name, stall.seconds,
                     self.settings.stall_seconds, EXIT_STALLED, stall.stack.rstrip() or "(its thread is gone)")
        try:
            self.grpc.health.enter_graceful_shutdown()  # liveness and readiness probes fail from now on
        except Exception:
            log.exception("setting health to NOT_SERVING failed")
        stopping = threading.Thread(target=self.stop, name="stop-after-stall", daemon=True)
        stopping.start()
        stopping.join(self.STALL_GRACE)
        if stopping.is_alive():
            log.error("the edge did not stop within %g s; exiting anyway", self.STALL_GRACE)
        logging.shutdown()
        os._exit(EXIT_STALLED)

    def stop(self) -> None:
        self.watchdog.stop()
        if self.registration is not None:
            self.registration.stop()
        for s in self.sources:
            s.stop()
        self.attributor.stop()
        if self.pod_events is not None:
            self.pod_events.stop()
        self.grpc.stop()
        self.store.close()
        log.info("pxo edge stopped; store closed")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(EdgeSettings, argv)
    except SettingsError as exc:
        print(f"pxo-edge: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        edge = Edge(settings)
        edge.start()
    except EdgeError as exc:
        print(f"pxo-edge: error: {exc}", file=sys.stderr)
        return 1
    wait_for_shutdown()
    edge.stop()
    return 0
