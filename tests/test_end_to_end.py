"""A real OOM kill travels edge -> collector -> cloud -> pxo query.

`pxo deploy --local` starts the three components as real processes on
loopback; a real OOM kill happens in a cgroup beneath this test's own cgroup;
the HTTP API and the CLI must both return exactly that kill, attributed to the
victim's own cgroup.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pxo.common.addr import read_addr_file
from pxo.edge.cgroups import memory_hierarchy
from pxo.edge.oomdrill import DRILL_COMM, run_drill
from tests.helpers.services import children, http

pytestmark = pytest.mark.requires_bpf


def pxo(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pxo.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def local(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}
    env.pop("PXO_API_URL", None)
    env.pop("PXO_API_KEY", None)
    r = pxo(env, "deploy", "--local", "--collector-port", "0", "--edge-port", "0", "--cloud-port", "0",
            "--node", "e2e-node")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "config" / "pxo" / "config.json").read_text())
    yield env, cfg, tmp_path / "data" / "pxo" / "local"
    r = pxo(env, "delete", "--local")
    assert r.returncode == 0, r.stderr


def query_api(cfg: dict, text: str) -> dict:
    status, body, _ = http("POST", cfg["api_url"] + "/api/v1/query", {"query": text}, key=cfg["api_key"])
    assert status == 200, body
    return body


def test_real_oom_kill_end_to_end(local) -> None:  # type: ignore[no-untyped-def]
    env, cfg, data_dir = local
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    drill = run_drill(limit_mib=64, allocate_mib=256)
    assert drill.killed and drill.oom_kills == 1

    end = time.monotonic() + 10
    while True:
        body = query_api(cfg, "oom_events | last 1h")
        cols = [c["name"] for c in body["columns"]]
        rows = [dict(zip(cols, r, strict=True)) for r in body["rows"]]
        recent = [r for r in rows if dt.datetime.fromisoformat(r["time"].rstrip("Z")) >= before]
        if recent or time.monotonic() > end:
            break
        time.sleep(0.2)

    assert len(recent) == 1, rows  # exactly that kill
    row = recent[0]
    assert row["pid"] == drill.pid and row["comm"] == DRILL_COMM
    assert row["anon_rss_bytes"] > 0
    assert row["cgroup_path"] == drill.cgroup_path  # the victim's cgroup, not the test's or a parent
    assert row["node"] == "e2e-node"
    assert body["nodes"] == [{"node": "e2e-node", "state": "ok", "detail": "", "rows": len(rows)}]
    assert not (memory_hierarchy().mount / drill.cgroup_path.lstrip("/")).exists()  # cleaned up

    r = pxo(env, "query", "oom_events | last 1h")
    assert r.returncode == 0, r.stderr
    assert str(drill.pid) in r.stdout and drill.cgroup_path in r.stdout

    # The demo's last step: why it died, from the default local deployment
    r = pxo(env, "explain", "--window", "2m")
    assert r.returncode == 0, r.stderr
    assert f"pid {drill.pid}" in r.stdout and "Why" in r.stdout and drill.cgroup_path in r.stdout

    # Every default source started from the loader's facts: the edge never parsed BTF itself.
    assert "in the edge for" not in (data_dir / "logs" / "edge.log").read_text()

    # Stop the edge for good (its supervisor too): the answer names it instead of silently
    # missing its rows.
    os.killpg(int((data_dir / "edge.pid").read_text()), signal.SIGKILL)
    r = pxo(env, "query", "oom_events | last 1h")
    assert r.returncode == 3
    assert "e2e-node" in r.stderr and "partial answer" in r.stderr


def _component(data_dir: Path, name: str) -> int:
    """The pid of the component ``name`` of a local deployment (its pid file names its supervisor)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        kids = children(int((data_dir / f"{name}.pid").read_text()))
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError(f"no {name} under its supervisor")


def _wait_answer(cfg: dict, text: str, done, timeout: float = 60):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        status, body, _ = http("POST", cfg["api_url"] + "/api/v1/query", {"query": text}, key=cfg["api_key"])
        if (status == 200 and done(body)) or time.monotonic() > end:
            return status, body
        time.sleep(0.5)


def test_crashed_components_are_started_again_and_lose_nothing(local) -> None:  # type: ignore[no-untyped-def]
    """`pxo deploy --local` supervises its components, as a kubelet would: the edge's process
    SIGKILLed, an OOM kill while it is down, and the kill is in the answers once, with what
    only eBPF saw (the pinned programs kept it); then the collector's, and the edge finds it
    again on its port."""
    env, cfg, data_dir = local

    def edge_started() -> dt.datetime:  # `pxo nodes`: when the edge's process started
        r = pxo(env, "nodes", "-o", "json")
        assert r.returncode == 0, r.stderr
        [node] = json.loads(r.stdout)["nodes"]
        return dt.datetime.fromisoformat(node["started"].replace("Z", "+00:00"))

    first_started = edge_started()
    edge = _component(data_dir, "edge")
    os.kill(edge, signal.SIGKILL)
    drill = run_drill(limit_mib=64, allocate_mib=256)
    assert drill.killed and drill.oom_kills == 1
    assert read_addr_file(data_dir / "edge" / "edge.addr") is None  # the kill came while no edge served

    def has_kill(body: dict) -> bool:
        return any(drill.pid in r for r in body["rows"])

    status, body = _wait_answer(cfg, "oom_events | last 1h", has_kill)
    assert status == 200, body
    cols = [c["name"] for c in body["columns"]]
    rows = [dict(zip(cols, r, strict=True)) for r in body["rows"] if drill.pid in r]
    assert len(rows) == 1, rows
    assert (rows[0]["cgroup_path"], rows[0]["constraint"], rows[0]["origin"]) == \
        (drill.cgroup_path, "memcg", "bpf+kmsg"), rows
    assert _component(data_dir, "edge") != edge
    log = (data_dir / "logs" / "edge.log").read_text()
    assert "edge ended after" in log and "killed by SIGKILL" in log and "adopted the programs pinned" in log
    end = time.monotonic() + 30  # the restart shows in `pxo nodes`: the edge started again, its uptime short
    while edge_started() <= first_started:
        assert time.monotonic() < end, "pxo nodes still reports the killed edge's start"
        time.sleep(0.5)
    shown = pxo(env, "nodes").stdout
    assert re.search(r"^\s*up\b\W+\d+s\b", shown, re.MULTILINE), shown  # seconds, not the first edge's minutes

    collector = _component(data_dir, "collector")
    os.kill(collector, signal.SIGKILL)
    time.sleep(0.5)
    status, body = _wait_answer(cfg, "oom_events | last 1h",
                                lambda b: b["nodes"] == [{"node": "e2e-node", "state": "ok", "detail": "",
                                                          "rows": len(b["rows"])}] and has_kill(b))
    assert status == 200 and has_kill(body), body
    assert _component(data_dir, "collector") != collector

    r = pxo(env, "delete", "--local")
    assert r.returncode == 0, r.stderr
    for name in ("collector", "edge", "cloud"):
        assert not (data_dir / f"{name}.pid").exists()
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and
                str(data_dir).encode() in _cmdline(p)]
    assert not leftover, [_cmdline(p) for p in leftover]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
