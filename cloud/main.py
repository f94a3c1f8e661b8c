"""pxo-cloud: the REST API (FastAPI on uvicorn) and its admin commands.

    python -m pxo.cloud serve --data-dir D --port 8700 --collector 127.0.0.1:50700
    python -m pxo.cloud bootstrap --data-dir D     # prints a new admin API key
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from pxo.cloud.settings import CloudSettings
from pxo.common.addr import write_addr_file
from pxo.common.settings import SettingsError, configure_logging, load_settings
from pxo.common.version import pxo_version

log = logging.getLogger("pxo.cloud")

USAGE = "usage: python -m pxo.cloud {serve|bootstrap} [--data-dir D] [options]  (--help for options)"


def serve(settings: CloudSettings) -> int:
    import uvicorn

    from pxo.cloud.app import create_app
    from pxo.cloud.collector_client import CollectorClient
    from pxo.common.tls import TlsError, channel_factory

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        dial = channel_factory(settings.tls, peer="collector")
    except TlsError as exc:
        print(f"pxo-cloud: error: TLS: {exc}", file=sys.stderr)
        return 1
    # With TLS, the deploy-time collector is dialed with the cluster certificate (clusters added
    # later through the API are dialed in plain text: their CA is not this one).
    collector = CollectorClient(settings.collector, token=settings.cluster_token, channel_factory=dial,
                                timeout=settings.query_timeout) if settings.tls else None
    app = create_app(settings, collector=collector)
    # Bind first, so port 0 works and the bound address can be published.
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"pxo-cloud: error: cannot listen on {settings.host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    # Slow or idle clients cost no worker: idle keep-alive connections are closed after
    # timeout_keep_alive, headers are capped by h11 (16 KiB), bodies are read within
    # read_timeout by BodyLimitMiddleware, and connections over limit_concurrency get 503.
    config = uvicorn.Config(app, log_level=settings.log_level.lower(),
                            timeout_keep_alive=int(max(1, settings.timeout_keep_alive)),
                            limit_concurrency=settings.limit_concurrency, h11_max_incomplete_event_size=16 * 1024,
                            timeout_graceful_shutdown=5, server_header=False)
    server = uvicorn.Server(config)
    write_addr_file(settings.data_dir / "cloud.addr", url)
    log.info("pxo cloud %s serving on %s (%s; cluster %r at %s, cluster token %s, %s)", pxo_version(), url,
             settings.environment, settings.cluster_name, settings.collector,
             "set" if settings.cluster_token else "not set",
             "mutual TLS" if settings.tls else "plain gRPC")
    server.run(sockets=[sock])
    return 0


def bootstrap(settings: CloudSettings) -> int:
    from pxo.cloud.db import Database
    from pxo.cloud.keys import bootstrap_admin

    db = Database(settings.db_path)
    try:
        print(bootstrap_admin(db))
    finally:
        db.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("serve", "bootstrap"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = load_settings(CloudSettings, argv[1:])
    except SettingsError as exc:
        print(f"pxo-cloud: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    os.umask(0o077)  # the metadata store and its WAL hold key digests and cluster tokens
    return serve(settings) if argv[0] == "serve" else bootstrap(settings)
