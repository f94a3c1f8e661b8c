"""The edge stays registered with its collector whatever its status says (a real collector, a
real edge in this process), and its probe_status rows are written whatever they say."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from pxo.edge.sources.base import SourceContext, SourceStatus
from pxo.edge.sources.status import PROBE_STATUS, ProbeStatusSource
from pxo.edge.store import Store
from pxo.v1 import pxo_pb2, pxo_pb2_grpc
from tests.helpers.liveedge import LiveEdge
from tests.helpers.seeding import wait_nodes
from tests.helpers.services import Service, start_collector


def test_a_status_quoting_a_path_that_is_not_utf8_does_not_end_the_heartbeats(
        tmp_path: Path, services: list[Service]) -> None:
    """A cgroup directory whose name is not UTF-8 (the kernel allows any bytes), quoted in a
    source's status by an error that formats the path (as edge/cgroups.py's errors do), once
    made protobuf refuse the heartbeat and ended the edge's registration thread: the node went
    down in the cluster's answers while it ran."""
    bad = os.fsencode(tmp_path) + b"/pod\xff"
    os.mkdir(bad)
    name = next(n for n in os.listdir(tmp_path) if n.startswith("pod"))  # as a walk of the tree reads it
    detail = f"cannot read {tmp_path / name / 'memory.stat'}: No such file or directory"
    assert "\udcff" in detail  # the byte as Python holds it: not UTF-8
    _, collector = start_collector(services, tmp_path / "collector")
    edge = LiveEdge(tmp_path / "edge", collector, "node-utf8",
                    extra_status=lambda: [SourceStatus("container_memory", "failed", detail)])
    try:
        wait_nodes(collector, 1, timeout=10)
        with grpc.insecure_channel(collector) as ch:
            nodes = pxo_pb2_grpc.CollectorStub(ch).ListNodes(pxo_pb2.ListNodesRequest(), timeout=5).nodes
        sources = {s.name: s.detail for n in nodes if n.info.node == "node-utf8" for s in n.info.sources}
        assert "pod\\xff/memory.stat" in sources["container_memory"], sources
    finally:
        edge.stop()


def test_registration_outlives_an_error_building_its_heartbeat(tmp_path: Path, services: list[Service]) -> None:
    _, collector = start_collector(services, tmp_path / "collector")
    calls = {"n": 0}

    def statuses() -> list[SourceStatus]:
        calls["n"] += 1
        if calls["n"] <= 2:  # the first heartbeats cannot be built
            raise RuntimeError("a status that cannot be read")
        return []

    edge = LiveEdge(tmp_path / "edge", collector, "node-retry", extra_status=statuses)
    try:
        wait_nodes(collector, 1, timeout=10)
        assert calls["n"] > 2
    finally:
        edge.stop()


def test_a_status_detail_that_is_not_utf8_is_a_probe_status_row_all_the_same(tmp_path: Path) -> None:
    """The same detail in the probe_status table: DuckDB refuses a string that is not UTF-8, and
    the store would leave the row out; the row is written with the byte escaped."""
    bad = os.fsencode(tmp_path) + b"/pod\xff"
    os.mkdir(bad)
    name = next(n for n in os.listdir(tmp_path) if n.startswith("pod"))
    detail = f"cannot read {tmp_path / name / 'memory.stat'}: No such file or directory"
    store = Store(tmp_path / "edge.duckdb", [PROBE_STATUS], flush_interval=0.02)
    store.start()
    try:
        src = ProbeStatusSource(SourceContext(sink=store, statuses=lambda: [
            SourceStatus("container_memory", "failed", detail)]))
        src.start()
        src.stop()
        assert store.flush()
        rows = store.rows("SELECT detail FROM probe_status WHERE source = 'container_memory'")
    finally:
        store.close()
    assert rows and "pod\\xff/memory.stat" in rows[0]["detail"], rows
    assert store.rows_dropped == 0
