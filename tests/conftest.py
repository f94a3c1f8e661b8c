"""Shared test fixtures: real processes on loopback, real DuckDB files, real eBPF.

Tests marked ``requires_bpf`` load eBPF programs and cause real OOM kills.
Without root, BCC or kernel headers they are skipped on a developer's machine
and FAIL in CI (CI=true), so a CI machine that lost BCC cannot pass silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.common.spawn import Component, ComponentFailed
from pxo.edge.prereqs import missing_for_bpf

IN_CI = os.environ.get("CI", "").lower() == "true"


def _bpf_missing() -> str:
    missing = missing_for_bpf()
    return "eBPF unavailable: " + "; ".join(missing) if missing else ""


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_bpf") is None:
        return
    reason = _bpf_missing()
    if reason and IN_CI:
        pytest.fail(f"CI=true and this test needs eBPF: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)


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


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all at teardown."""
    started: list[Service] = []
    yield started
    for s in reversed(started):
        s.stop()


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


class Stack:
    """A real collector, one edge serving a seeded store, and the cloud API."""

    def __init__(self, root: Path, services: list[Service]) -> None:
        from tests.collector.test_collector import seed_store, wait_nodes

        self.root = root
        self.collector, self.collector_addr = start_collector(
            services, root / "collector", "--heartbeat-interval", "0.5", "--expire-after", "2")
        seed_store(root / "edge", [101, 102])
        self.edge, _ = start_edge(services, root / "edge", self.collector_addr, "node-1", "--sources", "[]")
        wait_nodes(self.collector_addr, 1)
        self.cloud, self.url = start_cloud(services, root / "cloud", self.collector_addr)
        out = subprocess.run([sys.executable, "-m", "pxo.cloud", "bootstrap", "--data-dir", str(root / "cloud")],
                             capture_output=True, text=True, check=True)
        self.key = out.stdout.strip()


@pytest.fixture
def stack(tmp_path: Path, services: list[Service]) -> Stack:
    return Stack(tmp_path, services)


def http(method: str, url: str, body: object = None, *, key: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    """One real HTTP request; returns (status, JSON body, headers)."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)
