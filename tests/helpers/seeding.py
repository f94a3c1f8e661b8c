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


MiB = 1 << 20


def seed_explained_kill(data_dir: Path, *, pid: int = 4242, comm: str = "leaky", seconds: int = 120,
                        limit: int = 64 * MiB, leak_per_s: int = 400 * 1024) -> dict:
    """An edge's store with one memory cgroup OOM kill that has the evidence `pxo explain` reads:
    the kill with an oom_id, its cgroup in oom_risk every second for ``seconds`` before it (anonymous
    memory growing by ``leak_per_s`` to the limit, 4 MiB of page cache, PSI rising) and the kernel's
    candidate table (the victim and two others). Returns the oom_events row."""
    store = Store(data_dir / "edge.duckdb", all_tables(), flush_interval=0.01)
    store.start()
    t = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=2)
    cg, oom_id, cache = f"/explain/{comm}", f"6b1c2d4e-0000-4000-8000-00000000abcd:{pid}", 4 * MiB
    for i in range(seconds + 1):
        anon = limit - cache - leak_per_s * (seconds - i)
        store.append("oom_risk", {"time": t - dt.timedelta(seconds=seconds - i), "cgroup_path": cg, "cgroup_id": 7,
                                  "limit_bytes": limit, "usage_bytes": anon + cache, "anon_bytes": anon,
                                  "file_bytes": cache, "shmem_bytes": 0, "nonreclaimable_bytes": anon,
                                  "psi_some_avg10": 30.0 * i / seconds, "psi_full_avg10": 0.0, "samples": 10})
    kill = {**oom_row(pid, t), "comm": comm, "trigger_comm": comm, "cgroup_path": cg, "cgroup_id": 7,
            "anon_rss_bytes": limit - cache, "constraint": "memcg", "oom_memcg_path": cg, "chosen": True,
            "memcg_limit_bytes": limit, "memcg_usage_bytes": limit, "oom_id": oom_id}
    store.append("oom_events", kill)
    for n, (who, rss) in enumerate(((comm, limit - cache), ("sidecar", 3 * MiB), ("pause", MiB))):
        store.append("oom_candidates", {"time": t, "oom_id": oom_id, "pid": pid + n, "tgid": pid + n, "uid": 0,
                                        "comm": who, "rss_bytes": rss, "victim": n == 0, "oom_memcg_path": cg,
                                        "constraint": "memcg"})
    store.flush()
    store.close()
    return kill


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
