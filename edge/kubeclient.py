"""The edge's Kubernetes API client: JSON over HTTP(S) with the standard library.

The edge asks the API server three things: list this node's pods, watch them, and
create or patch an Event on a pod (edge/attribution.py, edge/kubeevents.py). The
official client does that too, but importing it (its 800 models, urllib3, yaml,
oauthlib, google-auth) costs an edge 42 MiB resident, a third of its whole budget,
on every node; this costs about 1 MiB. The CLI keeps the official client
(`pxo deploy --kubernetes` applies manifests of every kind).

Credentials, as the official client finds them:

- in a pod: the service account (``KUBERNETES_SERVICE_HOST``/``_PORT``, its token, read
  again on every request because the kubelet rotates it, and its CA);
- elsewhere: a kubeconfig (the files $KUBECONFIG lists, else ~/.kube/config; the current
  context's server, CA and a token, token file or client certificate). Exec plugins,
  auth providers and passwords are not supported: a clear error says so.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """An answer other than 2xx (``status``, ``reason``), or no answer (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"HTTP {status}: {reason}" + (f" ({message})" if message else ""))
        self.status = status
        self.reason = reason
        self.message = message


class ConfigError(ValueError):
    """No usable credentials: what is missing or unsupported, in one line."""


@dataclass(frozen=True)
class KubeClient:
    """How to reach one API server: its URL, a bearer token (or a file to read it from on every
    request) or a client certificate, and the CA to trust (none: the system's)."""

    host: str
    token: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    ca_data: str | None = None  # PEM
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False

    # -- where the credentials come from ----------------------------------------------

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str], serviceaccount: Path = SERVICE_ACCOUNT) -> KubeClient:
        host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError("not in a pod: KUBERNETES_SERVICE_HOST is not set")
        token, ca = serviceaccount / "token", serviceaccount / "ca.crt"
        if not token.is_file():
            raise ConfigError(f"service account token file does not exist: {token}")
        if not ca.is_file():
            raise ConfigError(f"service account CA file does not exist: {ca}")
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", token_file=token, ca_file=ca)

    @classmethod
    def from_kubeconfig(cls, files: list[Path]) -> KubeClient:
        """The current context of the kubeconfig ``files`` (merged as kubectl does: the first
        file to set a name or the current context wins)."""
        import yaml  # only outside a cluster

        merged: dict[str, dict[str, Any]] = {"clusters": {}, "users": {}, "contexts": {}}
        current = ""
        base: dict[tuple[str, str], Path] = {}  # relative paths are relative to their file
        for f in files:
            try:
                doc = yaml.safe_load(f.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"cannot read the kubeconfig {f}: {exc}") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"the kubeconfig {f} is not a mapping")
            current = current or str(doc.get("current-context") or "")
            for kind, key in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
                for item in doc.get(kind) or ():
                    if isinstance(item, dict) and item.get("name") and item["name"] not in merged[kind]:
                        merged[kind][item["name"]] = item.get(key) or {}
                        base[(kind, item["name"])] = f.parent
        if not current:
            raise ConfigError("the kubeconfig sets no current-context")
        context = merged["contexts"].get(current)
        if context is None:
            raise ConfigError(f"the kubeconfig has no context {current!r}")
        cluster = merged["clusters"].get(context.get("cluster", ""))
        if not cluster or not cluster.get("server"):
            raise ConfigError(f"the kubeconfig context {current!r} names no cluster with a server")
        user = merged["users"].get(context.get("user", ""), {})
        unsupported = sorted(set(user) & {"exec", "auth-provider", "username", "password"})
        if unsupported:
            raise ConfigError(f"the kubeconfig user of context {current!r} authenticates with "
                              f"{', '.join(unsupported)}, which the edge does not support: give it a token, "
                              "a token file or a client certificate")

        def path(kind: str, name: str, value: str | None) -> Path | None:
            if not value:
                return None
            p = Path(value).expanduser()
            return p if p.is_absolute() else base[(kind, name)] / p

        cname, uname = context.get("cluster", ""), context.get("user", "")
        return cls(
            str(cluster["server"]).rstrip("/"),
            token=user.get("token") or None,
            token_file=path("users", uname, user.get("tokenFile")),
            ca_file=path("clusters", cname, cluster.get("certificate-authority")),
            ca_data=base64.b64decode(cluster["certificate-authority-data"]).decode()
            if cluster.get("certificate-authority-data") else None,
            cert_file=path("users", uname, user.get("client-certificate"))
            or _data_file(user.get("client-certificate-data")),
            key_file=path("users", uname, user.get("client-key")) or _data_file(user.get("client-key-data")),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
        )

    # -- requests ------------------------------------------------------------------------

    def authorization(self) -> str | None:
        """The Authorization header's value: the token, read again from its file each time."""
        token = self.token
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise KubeError(0, f"cannot read the token file {self.token_file}: {exc.strerror}") from None
        return f"Bearer {token}" if token else None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.host)
        if url.scheme == "http":
            return http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=timeout)
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return http.client.HTTPSConnection(url.hostname or "", url.port or 443, timeout=timeout, context=ctx)

    def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: Any, content_type: str,
              timeout: tuple[float, float]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        prefix = urllib.parse.urlsplit(self.host).path.rstrip("/")
        target = prefix + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "pxo-edge"}
        auth = self.authorization()
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn = self._connect(timeout[0])
        try:
            conn.request(method, target, body=data, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(timeout[1])
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise KubeError(0, f"{type(exc).__name__}: {exc}") from None
        if not 200 <= resp.status < 300:
            raw = resp.read()
            conn.close()
            message = ""
            with contextlib.suppress(ValueError, AttributeError):
                message = str(json.loads(raw).get("message") or "")
            raise KubeError(resp.status, resp.reason, message)
        return conn, resp

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
                content_type: str = "application/json", timeout: tuple[float, float] = (10.0, 60.0)) -> Any:
        """One call; its JSON answer. KubeError for anything but 2xx."""
        conn, resp = self._send(method, path, query, body, content_type, timeout)
        try:
            return json.loads(resp.read() or b"null")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise KubeError(0, f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    def watch(self, path: str, *, query: Mapping[str, str], timeout: tuple[float, float]) -> Watch:
        """A watch stream (``watch=true``): its events, one JSON object a line, until the server
        ends it; ``Watch.stop()`` from another thread ends it at once."""
        return Watch(self, path, {**query, "watch": "true"}, timeout)


class Watch:
    def __init__(self, client: KubeClient, path: str, query: Mapping[str, str], timeout: tuple[float, float]) -> None:
        self._client, self._path, self._query, self._timeout = client, path, query, timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def events(self) -> Iterator[dict[str, Any]]:
        conn, resp = self._client._send("GET", self._path, self._query, None, "", self._timeout)
        with self._lock:
            self._conn = conn
            stopped = self._stopped
        try:
            while not stopped:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    if self._stopped:
                        return
                    raise KubeError(0, f"{type(exc).__name__}: {exc}") from None
                if not line:
                    return  # the server ended the watch (its timeout)
                if line.strip():
                    try:
                        event = json.loads(line)
                    except ValueError:
                        raise KubeError(0, f"not a watch event: {line[:200]!r}") from None
                    if isinstance(event, dict):
                        yield event
                stopped = self._stopped
        finally:
            conn.close()

    def stop(self) -> None:
        """End the stream: a read blocked in another thread returns at once."""
        with self._lock:
            self._stopped = True
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def _data_file(data: str | None) -> Path | None:
    """A kubeconfig's inline client certificate or key (base64 PEM) as a file only this user
    reads (ssl loads them from files only), removed when the process exits."""
    if not data:
        return None
    fd, name = tempfile.mkstemp(prefix="pxo-kube-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return Path(name)
