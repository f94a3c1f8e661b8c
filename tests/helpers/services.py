"""pxo's components as real processes on loopback (common/spawn.py), a whole Stack of them,
and real HTTP requests to the cloud."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pxo.common.spawn import Component, ComponentFailed
from tests.helpers.seeding import seed_store, wait_nodes


class Service(Component):
    """A pxo component running as a real process (common/spawn.py), its log kept for failures."""

    def __init__(self, name: str, args: list[str], data_dir: Path, *, env: dict[str, str] | None = None,
                 addr_name: str | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(name, args, addr_file=data_dir / f"{addr_name or name}.addr",
                         log_path=data_dir / f"{name}.log", env=env)

    def wait_addr(self, timeout: float = 60.0) -> str:
        try:
            return super().wait_addr(timeout)
        except ComponentFailed as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None


def start_collector(services: list[Service], data_dir: Path, *extra: str) -> tuple[Service, str]:
    s = Service("collector", ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), *extra], data_dir)
    services.append(s)
    return s, s.wait_addr()


def start_edge(services: list[Service], data_dir: Path, collector: str, node: str,
               *extra: str, env: dict[str, str] | None = None) -> tuple[Service, str]:
    s = Service("edge", ["--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--node", node,
                         *(["--collector", collector] if collector else []), *extra], data_dir, env=env)
    services.append(s)
    return s, s.wait_addr()


def start_cloud(services: list[Service], data_dir: Path, collector: str, *extra: str,
                env: dict[str, str] | None = None) -> tuple[Service, str]:
    s = Service("cloud", ["serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", "0",
                          "--collector", collector, *extra], data_dir, env=env)
    services.append(s)
    return s, s.wait_addr()


def bootstrap(data_dir: Path) -> str:
    """The cloud's first admin key (`python -m pxo.cloud bootstrap`)."""
    return subprocess.run([sys.executable, "-m", "pxo.cloud", "bootstrap", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, check=True).stdout.strip()


def start_lone_cloud(services: list[Service], data_dir: Path, *extra: str, collector: str = "127.0.0.1:9",
                     env: dict[str, str] | None = None) -> tuple[str, str]:
    """A cloud alone (by default with no collector behind it: enough for auth and limits);
    returns (url, admin key)."""
    _, url = start_cloud(services, data_dir, collector, *extra, env=env)
    return url, bootstrap(data_dir)


class Stack:
    """A real collector, one edge serving a seeded store, and the cloud API."""

    def __init__(self, root: Path, services: list[Service]) -> None:
        self.root = root
        self.collector, self.collector_addr = start_collector(
            services, root / "collector", "--heartbeat-interval", "0.5", "--expire-after", "2")
        seed_store(root / "edge", [101, 102])
        self.edge, _ = start_edge(services, root / "edge", self.collector_addr, "node-1", "--sources", "[]")
        wait_nodes(self.collector_addr, 1)
        self.cloud, self.url = start_cloud(services, root / "cloud", self.collector_addr)
        self.key = bootstrap(root / "cloud")


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


def http(method: str, url: str, body: object = None, *, key: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """``call`` for JSON APIs: (status, JSON body, lower-cased headers)."""
    status, parsed, lowered, _ = call(method, url, body, key=key, headers=headers)
    return status, parsed, lowered


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (/proc/*/stat; this kernel has no .../children)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d.name))
    return out
