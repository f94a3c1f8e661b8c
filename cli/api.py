"""A small HTTP client for the pxo cloud (stdlib only, so `pxo` starts fast)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pxo.cli.config import Config
from pxo.cli.errors import CliError, Unreachable


class Api:
    def __init__(self, url: str, key: str = "", *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout

    @classmethod
    def from_config(cls, cfg: Config) -> Api:
        if not cfg.api_url:
            raise CliError("pxo is not configured: run 'pxo deploy --local', or set PXO_API_URL and PXO_API_KEY")
        if not cfg.api_key:
            raise CliError("no API key: set PXO_API_KEY, or run 'pxo deploy --local' to create one")
        return cls(cfg.api_url, cfg.api_key)

    def call(self, method: str, path: str, body: Any = None, *, query: dict[str, str] | None = None) -> Any:
        """One JSON request, its decoded JSON answer."""
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        with self.open(method, path, body, accept="application/json") as resp:
            try:
                data = resp.read()
            except (TimeoutError, ConnectionError) as exc:
                raise Unreachable(f"the pxo cloud at {self.url} stopped answering: {exc}") from None
        return json.loads(data or b"null")

    def open(self, method: str, path: str, body: Any = None, *, accept: str,
             timeout: float | None = -1.0) -> Any:
        """Send a request and hand back the open response (to be read whole, or as a stream).
        ``timeout=None``: wait for data forever (a follow stream may be quiet for hours).
        Every error becomes one CliError here: the HTTP ones from the API's error object."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", accept)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            if timeout is None:
                return urllib.request.urlopen(req)  # the default: no socket timeout
            return urllib.request.urlopen(req, timeout=self.timeout if timeout < 0 else timeout)
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the pxo cloud at {self.url}: {reason}",
                              detail="is pxo deployed? try 'pxo deploy --local'") from None

    def _http_error(self, exc: urllib.error.HTTPError) -> CliError:
        try:
            err = json.loads(exc.read()).get("error", {})
        except ValueError:
            err = {}
        message = err.get("message") or f"the pxo cloud answered HTTP {exc.code}"
        return self.error(exc.code, err, message, retry=exc.headers.get("Retry-After", "?"))

    @staticmethod
    def error(code: int, err: dict[str, Any], message: str = "", *, retry: str = "?") -> CliError:
        """The CliError for an API error object (also one that ends a streamed answer:
        ``code`` is then the HTTP status the error would have had)."""
        message = message or err.get("message") or f"the pxo cloud answered HTTP {code}"
        if code == 502 or err.get("code") == "collector_unavailable":
            return Unreachable(message)
        if code == 401:
            return CliError(message, detail="  sign in with 'pxo auth login', or set PXO_API_KEY")
        if code == 403:
            return CliError(message, detail="  ask an admin of this pxo cloud, or use an admin key")
        if code == 429:
            return CliError(message, detail=f"  retry after {retry} s")
        return CliError(message, line=int(err.get("line", 0)), column=int(err.get("column", 0)),
                        hint=str(err.get("hint", "")))
