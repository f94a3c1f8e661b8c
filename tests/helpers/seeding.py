"""Rows for edges to serve, and the collector's answers read back: an edge's store seeded with
OOM kills (a real DuckDB file), a query over real gRPC, waiting for nodes to register."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import grpc
import pyarrow as pa

from pxo.common import arrowipc
from pxo.common.contract import NodeState, node_state_name
from pxo.edge.sources import all_tables
from pxo.edge.store import Store
from pxo.v1 import pxo_pb2, pxo_pb2_grpc


def oom_row(pid: int, when: dt.datetime) -> dict:
    return {"time": when, "pid": pid, "tid": pid, "comm": f"proc{pid}", "uid": 0, "oom_score_adj": 0,
            "total_vm_bytes": 1 << 30, "anon_rss_bytes": 1 << 29, "file_rss_bytes": 0, "shmem_rss_bytes": 0,
            "swap_bytes": 0, "pgtables_bytes": 4096, "trigger_pid": pid, "trigger_tid": pid,
            "trigger_comm": f"proc{pid}", "cgroup_path": f"/test/{pid}", "cgroup_id": pid,
            "cgroup_v2_path": "/", "cgroup_v2_id": 1}


def seed_store(data_dir: Path, pids: list[int], age: dt.timedelta = dt.timedelta(minutes=5)) -> None:
    store = Store(data_dir / "edge.duckdb", all_tables(), flush_interval=0.01)
    store.start()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    for pid in pids:
        store.append("oom_events", oom_row(pid, now - age))
    store.flush()
    store.close()


def query(addr: str, text: str, syntax: int = pxo_pb2.SYNTAX_PIPE, **kw: int) -> dict:
    with grpc.insecure_channel(addr) as ch:
        stub = pxo_pb2_grpc.CollectorStub(ch)
        batches, schema, summary, error = [], None, None, None
        for reply in stub.Query(pxo_pb2.QueryRequest(text=text, syntax=syntax, **kw), timeout=30):
            part = reply.WhichOneof("part")
            if part == "batch":
                schema, bs = arrowipc.decode(reply.batch.ipc_stream)
                batches += bs
            elif part == "summary":
                summary = reply.summary
            else:
                error = reply.error
    if error is not None:
        return {"error": error}
    return {"table": pa.Table.from_batches(batches, schema=schema), "summary": summary}


def wait_nodes(addr: str, n: int, state: int = NodeState.LIVE, timeout: float = 20) -> None:
    """Wait until the collector at ``addr`` knows at least ``n`` nodes in ``state``."""
    end = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as ch:
        stub = pxo_pb2_grpc.CollectorStub(ch)
        while time.monotonic() < end:
            nodes = stub.ListNodes(pxo_pb2.ListNodesRequest(), timeout=5).nodes
            if sum(1 for e in nodes if e.state == state) >= n:
                return
            time.sleep(0.1)
    raise AssertionError(f"fewer than {n} {node_state_name(state)} nodes after {timeout} s")
