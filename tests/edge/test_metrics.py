"""The edge's Prometheus endpoint, scraped from a real edge after a real OOM kill."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pxo.common.addr import read_addr_file
from pxo.edge.oomdrill import run_drill
from tests.helpers.oom import edge_rows, wait_rows
from tests.helpers.services import Service, start_edge

pytestmark = pytest.mark.requires_bpf


def scrape(addr: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_after_a_real_oom_kill(tmp_path: Path, services: list[Service]) -> None:
    before = time.time()
    _, addr = start_edge(services, tmp_path, "", "node-m", "--sources", '["oom"]', "--metrics", "127.0.0.1:0")
    metrics_addr = read_addr_file(tmp_path / "metrics.addr")
    assert metrics_addr
    drill = run_drill()
    wait_rows(addr, f"SELECT pid FROM oom_events WHERE pid = {drill.pid}", 1)
    with pytest.raises(Exception, match="refused"):
        edge_rows(addr, "SELECT getenv('HOME')")
    m = scrape(metrics_addr)
    node = ("node", "node-m")
    kills = sum(v for (name, labels), v in m.items() if name == "pxo_edge_oom_kills_total" and node in labels)
    assert kills >= 1
    assert m[("pxo_edge_source_state", frozenset({node, ("source", "oom"), ("state", "running")}))] == 1.0
    assert m[("pxo_edge_source_events_total", frozenset({node, ("source", "oom")}))] >= 1
    assert m[("pxo_edge_source_restarts_total", frozenset({node, ("source", "oom")}))] == 0
    assert before <= m[("pxo_edge_start_time_seconds", frozenset({node}))] <= time.time()
    assert m[("pxo_edge_store_bytes", frozenset({node}))] > 0
    assert m[("pxo_edge_fragments_total", frozenset({("outcome", "ok")}))] >= 1
    assert m[("pxo_edge_fragments_total", frozenset({("outcome", "refused")}))] == 1
