"""Helpers for the cloud's tests: raw HTTP against the real uvicorn of a Stack."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def call(method: str, url: str, body: object = None, *, key: str | None = None,
         headers: dict[str, str] | None = None, data: bytes | None = None,
         ) -> tuple[int, Any, dict[str, str], bytes]:
    """One real HTTP request: (status, JSON body or None, lower-cased headers, raw body)."""
    raw_body = data if data is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, method=method, data=raw_body)
    if raw_body is not None:
        req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, raw, hdrs = exc.code, exc.read(), exc.headers
    lowered = {k.lower(): v for k, v in hdrs.items()}
    parsed = None
    if raw and lowered.get("content-type", "").startswith("application/json"):
        parsed = json.loads(raw)
    return status, parsed, lowered, raw


def start_lone_cloud(services: list, data_dir: Path, *extra: str, collector: str = "127.0.0.1:9",
                     env: dict[str, str] | None = None) -> tuple[str, str]:
    """A cloud alone (by default with no collector behind it: enough for auth and limits);
    returns (url, admin key)."""
    from tests.conftest import Service

    s = Service("cloud", ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0",
                          "--collector", collector, *extra], data_dir, env=env)
    services.append(s)
    url = s.wait_addr()
    key = subprocess.run([sys.executable, "-m", "pxo.cloud", "bootstrap", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, check=True).stdout.strip()
    return url, key
