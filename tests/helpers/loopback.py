"""A real HTTP server on loopback (any free port), serving in a daemon thread: what the fake
Kubernetes API servers of tests/helpers/kubeapi.py and kubeapi_apply.py run on."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no request log, and JSON answers with their length."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall per call

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class LoopbackHTTP:
    """Requests are answered by a subclass of ``handler`` whose ``server_api`` is ``api``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], api: object, *, name: str,
                 tls: ssl.SSLContext | None = None) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (handler,), {"server_api": api}))
        self.tls = tls
        if tls is not None:  # HTTPS: the handshake happens in each request's thread
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=name, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def write_kubeconfig(directory: Path, url: str, token: str | None) -> Path:
    """``directory``/kubeconfig: one context for the API server at ``url``, with a bearer
    ``token`` (None: no credentials)."""
    path = directory / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": token} if token is not None else {}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path
