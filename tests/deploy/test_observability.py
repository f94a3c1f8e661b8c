"""deploy/grafana-dashboard.json and deploy/prometheus-rules.yaml: their
structure, and that every metric they name is one pxo really exports (the
names are read from the live registries of the edge, collector and cloud, not
from a list kept by hand). Also the edge's per-pod OOM kill counter, fed by a
real OOM source through the real attributing sink."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pxo.cloud.metrics import CloudMetrics
from pxo.collector.metrics import CollectorMetrics
from pxo.collector.registry import Registry
from pxo.edge.attribution import AttributingSink, Attributor
from pxo.edge.metrics import EdgeCollector, EdgeMetrics
from pxo.edge.sources import all_tables
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.oom import OomSource
from pxo.edge.store import Store

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
POD_UID = "0d3c8a5e-5a2f-4a51-9b1a-1f6a3b2c4d5e"
CID = "a" * 64
POD_CGROUP = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
              f"cri-containerd-{CID}.scope")


def exported(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry exposes (counters as _total, histograms as _bucket/_sum/_count)."""
    names = set()
    for fam in registry.collect():
        if fam.type == "counter":
            names |= {f"{fam.name}_total", f"{fam.name}_created"}
        elif fam.type == "histogram":
            names |= {f"{fam.name}_bucket", f"{fam.name}_sum", f"{fam.name}_count", f"{fam.name}_created"}
        else:
            names.add(fam.name)
    return names


@pytest.fixture(scope="module")
def metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    store = Store(tmp_path_factory.mktemp("edge") / "edge.duckdb", all_tables())
    store.start()
    try:
        edge = EdgeMetrics()
        edge.watch(EdgeCollector(node="n", sources=[], store=store, extra_status=list))
        collector = CollectorMetrics()
        collector.watch(Registry(expire_after=6, forget_after=60))
        names = exported(edge.registry) | exported(collector.registry) | exported(CloudMetrics().registry)
    finally:
        store.close()
    assert {"pxo_edge_oom_kills_total", "pxo_edge_pod_oom_kills_total", "pxo_collector_edge_up",
            "pxo_cloud_requests_total"} <= names
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bpxo_[a-z0-9_]+", expr))


def test_dashboard(metric_names: set[str]) -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert "datasource" in variables
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    charts = [p for p in panels if p["type"] != "row"]
    titles = " ".join(p["title"] for p in charts)
    assert "per namespace" in titles and "per pod" in titles and "Edge up" in titles
    for p in charts:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys() and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = referenced(t["expr"])
            assert names, f"{p['title']}: {t['expr']} names no pxo metric"
            assert names <= metric_names, f"{p['title']}: unknown {names - metric_names}"
            assert set(re.findall(r"\$(\w+)", t["expr"])) <= variables | {"__range", "__rate_interval"}
            assert t["expr"].count("(") == t["expr"].count(")")


def test_alert_rules(metric_names: set[str]) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert all(g["name"] and g["rules"] for g in rules["groups"])
    names = [r["alert"] for r in alerts]
    assert len(names) == len(set(names))
    for r in alerts:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r["alert"]
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        assert r["annotations"]["summary"]
        if "for" in r:
            assert re.fullmatch(r"\d+[smh]", r["for"])
        used = referenced(r["expr"])
        assert used and used <= metric_names, f"{r['alert']}: unknown {used - metric_names}"
        assert r["expr"].count("(") == r["expr"].count(")")
    every = set().union(*(referenced(r["expr"]) for r in alerts))
    # what the rules must watch: OOM kill rate, edges down, sources degraded/failed, events lost
    assert {"pxo_edge_oom_kills_total", "pxo_collector_edge_up", "pxo_edge_source_state",
            "pxo_edge_source_lost_total", "pxo_edge_source_restarts_total", "pxo_edge_start_time_seconds"} <= every


class Pods:
    """A PodIndex (edge/attribution.py's plug-in point) over one known pod."""

    def lookup(self, pod_uid: str, container_id: str | None) -> tuple[str, str, str | None] | None:
        return ("shop", "cart-7d9f", "cart" if container_id == CID else None) if pod_uid == POD_UID else None


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def append(self, table: str, row: Any) -> None:
        self.rows.append((table, dict(row)))


def test_pod_oom_kills_counter(tmp_path: Path) -> None:
    rows = Rows()
    sink = AttributingSink(rows, Attributor(pods=Pods()), all_tables())
    oom = OomSource(SourceContext(sink=sink, use_bpf=False))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for pid, path in ((1, POD_CGROUP), (2, POD_CGROUP), (3, "/system.slice/cron.service")):
        oom._emit_kill({"time": now, "pid": pid, "cgroup_path": path, "origin": "bpf"})
    assert oom.kills_by_pod == {("shop", "cart-7d9f", "cart"): 2}  # the non-pod kill has no pod series
    assert [r["pod"] for t, r in rows.rows if t == "oom_events"] == ["cart-7d9f", "cart-7d9f", None]

    store = Store(tmp_path / "edge.duckdb", all_tables())
    store.start()
    try:
        m = EdgeMetrics()
        m.watch(EdgeCollector(node="node-1", sources=[oom], store=store, extra_status=list))
        text = generate_latest(m.registry).decode()
    finally:
        store.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("pxo_edge_pod_oom_kills_total", (("container", "cart"), ("namespace", "shop"),
                                                     ("node", "node-1"), ("pod", "cart-7d9f")))] == 2
    assert samples[("pxo_edge_oom_kills_total", (("constraint", "unknown"), ("node", "node-1")))] == 3
