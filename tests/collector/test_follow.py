"""`pxo query --follow` over real gRPC: a real collector process, edges serving real
DuckDB stores (in this process, so a test can commit rows into them, or as processes),
and the store's subscription mechanism itself."""

from __future__ import annotations

import datetime as dt
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pxo.common import arrowipc
from pxo.edge.sources import all_tables
from pxo.edge.store import FollowerTooSlow, Store
from pxo.v1 import pxo_pb2, pxo_pb2_grpc
from tests.helpers.liveedge import LiveEdge, utcnow
from tests.helpers.seeding import oom_row, seed_store, wait_nodes
from tests.helpers.services import Service, start_collector, start_edge

State = pxo_pb2.NodeStatus.State


@pytest.fixture
def live_edges() -> Iterator[list[LiveEdge]]:
    made: list[LiveEdge] = []
    yield made
    for e in made:
        e.stop()


class Follower:
    """A Collector.Follow call read by a thread into a queue (so waits have deadlines)."""

    def __init__(self, addr: str, text: str, syntax: int = pxo_pb2.SYNTAX_PIPE) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.call = pxo_pb2_grpc.CollectorStub(self.channel).Follow(pxo_pb2.QueryRequest(text=text, syntax=syntax))
        self.replies: queue.Queue[Any] = queue.Queue()
        self.rows: list[dict[str, Any]] = []
        self.statuses: list[pxo_pb2.NodeStatus] = []
        self.errors: list[pxo_pb2.QueryError] = []
        self.schema = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.put(reply)
        except grpc.RpcError as exc:
            self.replies.put(exc)

    def next(self, timeout: float = 20.0) -> Any:
        reply = self.replies.get(timeout=timeout)
        if isinstance(reply, pxo_pb2.QueryReply):
            part = reply.WhichOneof("part")
            if part == "batch":
                schema, batches = arrowipc.decode(reply.batch.ipc_stream)
                self.schema = self.schema or schema
                for b in batches:
                    self.rows += b.to_pylist()
            elif part == "summary":
                self.statuses += list(reply.summary.nodes)
            else:
                self.errors.append(reply.error)
        return reply

    def until(self, done: Any, what: str, timeout: float = 20.0) -> None:
        """Read replies until ``done(self)`` holds."""
        end = time.monotonic() + timeout
        while not done(self):
            left = end - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty
                self.next(left)
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout} s; rows {self.rows}, statuses "
                                     f"{[(s.node, s.state, s.detail) for s in self.statuses]}") from None

    def following(self, node: str) -> bool:
        return any(s.node == node and s.state == State.OK and s.detail.startswith("following")
                   for s in self.statuses)

    def pids(self) -> list[int]:
        return [r["pid"] for r in self.rows]

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def collector(tmp_path: Path, services: list[Service]) -> str:
    _, addr = start_collector(services, tmp_path / "collector", "--heartbeat-interval", "0.5",
                              "--expire-after", "2")
    return addr


def test_follow_streams_new_rows_filtered_once_and_picks_up_new_edges(
        tmp_path: Path, collector: str, live_edges: list[LiveEdge]) -> None:
    a = LiveEdge(tmp_path / "a", collector, "node-a")
    live_edges.append(a)
    a.add(100, 101)  # stored before: no range opener, so no backlog
    wait_nodes(collector, 1)
    f = Follower(collector, 'oom_events | where pid >= 100 | project node, pid, mib = anon_rss_bytes / 1MiB')
    try:
        first = f.next()
        assert first.WhichOneof("part") == "batch" and f.schema is not None
        assert f.schema.names == ["node", "pid", "mib"] and not f.rows
        f.until(lambda f: f.following("node-a"), "subscription of node-a")
        a.add(1, 102, 2, 103)
        a.add(104)
        f.until(lambda f: 104 in f.pids(), "row 104")
        assert f.pids() == [102, 103, 104]
        assert {r["node"] for r in f.rows} == {"node-a"} and f.rows[0]["mib"] == 512

        # an edge that registers while following is followed too
        b = LiveEdge(tmp_path / "b", collector, "node-b")
        live_edges.append(b)
        f.until(lambda f: f.following("node-b"), "subscription of node-b")
        b.add(200, 3)
        a.add(105)
        f.until(lambda f: {200, 105} <= set(f.pids()), "rows of both nodes")
        a.add(999)  # a last row: anything sent twice would have come before it
        f.until(lambda f: 999 in f.pids(), "row 999")
        assert sorted(f.pids()) == [102, 103, 104, 105, 200, 999]
        assert {(r["node"], r["pid"]) for r in f.rows if r["pid"] == 200} == {("node-b", 200)}
    finally:
        f.close()
    # the edges' subscriptions end with the client's call
    end = time.monotonic() + 20
    while (a.store.followers() or b.store.followers()) and time.monotonic() < end:
        time.sleep(0.05)
    assert a.store.followers() == 0 and b.store.followers() == 0


def test_backlog_then_live_rows_without_gap_or_duplicate(
        tmp_path: Path, collector: str, live_edges: list[LiveEdge]) -> None:
    e = LiveEdge(tmp_path / "e", collector, "node-e")
    live_edges.append(e)
    e.add(1, 2, age=dt.timedelta(minutes=5))
    e.add(3, age=dt.timedelta(hours=2))  # outside the range
    wait_nodes(collector, 1)
    # a writer commits rows the whole time the follow starts: each lands in the backlog or
    # in the live stream, never both, never neither
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        pid = 1000
        while not stop.is_set():
            e.store.append("oom_events", oom_row(pid, utcnow()))
            written.append(pid)
            pid += 1
            if pid % 5 == 0:
                e.store.flush()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    f = Follower(collector, "oom_events | last 10m | project pid")
    try:
        f.until(lambda f: f.following("node-e"), "subscription of node-e")
        f.until(lambda f: any(p >= 1000 for p in f.pids()), "a live row")
        stop.set()
        writer.join()
        e.store.append("oom_events", oom_row(999_999, utcnow()))
        assert e.store.flush()
        f.until(lambda f: 999_999 in f.pids(), "the last row")
    finally:
        stop.set()
        f.close()
    pids = f.pids()
    assert len(pids) == len(set(pids)), "a row came twice"
    assert set(pids) == {1, 2, *written, 999_999}


def test_not_row_local_and_sql_are_refused_with_a_position(collector: str, tmp_path: Path,
                                                           live_edges: list[LiveEdge]) -> None:
    live_edges.append(LiveEdge(tmp_path / "e", collector, "node-e"))
    wait_nodes(collector, 1)
    text = "oom_events | where pid > 1 | summarize n = count() by comm"
    f = Follower(collector, text)
    try:
        reply = f.next()
    finally:
        f.close()
    err = reply.error
    assert reply.WhichOneof("part") == "error"
    assert err.message.startswith("--follow streams rows as they arrive") and "drop --follow" in err.message
    assert (err.line, err.column) == (1, text.index("summarize") + 1)
    f = Follower(collector, "SELECT * FROM oom_events", pxo_pb2.SYNTAX_SQL)
    try:
        reply = f.next()
    finally:
        f.close()
    assert reply.WhichOneof("part") == "error" and "not SQL" in reply.error.message
    f = Follower(collector, "oom_event | where pid > 1")
    try:
        reply = f.next()
    finally:
        f.close()
    assert reply.WhichOneof("part") == "error" and "oom_events" in reply.error.hint


def test_a_killed_edge_is_reported_in_band_and_followed_again(tmp_path: Path, collector: str,
                                                              services: list[Service]) -> None:
    seed_store(tmp_path / "p", [7])
    edge, _ = start_edge(services, tmp_path / "p", collector, "node-p", "--sources", "[]")
    wait_nodes(collector, 1)
    f = Follower(collector, "oom_events | last 1h | project node, pid")
    try:
        f.until(lambda f: f.following("node-p") and 7 in f.pids(), "backlog of node-p")
        edge.stop(signal.SIGKILL)
        f.until(lambda f: any(s.node == "node-p" and s.state == State.FAILED for s in f.statuses),
                "an in-band status for the killed edge")
        f.until(lambda f: any(s.node == "node-p" and s.state == State.DOWN for s in f.statuses),
                "node-p down once it stopped heartbeating")
        time.sleep(1.5)  # several of the collector's checks while it is down: said once, not repeated
        edge, _ = start_edge(services, tmp_path / "p", collector, "node-p", "--sources", "[]")
        f.until(lambda f: any(s.node == "node-p" and s.state == State.OK and "again" in s.detail
                              for s in f.statuses), "node-p followed again")
    finally:
        f.close()
    assert f.pids() == [7]  # the backlog is not sent again
    seen = [(s.state, s.detail) for s in f.statuses if s.node == "node-p"]
    assert [st for st, _ in seen] == [State.OK, State.FAILED, State.DOWN, State.OK], seen  # each change once


def test_a_slow_follower_is_ended_and_never_blocks_ingest(tmp_path: Path, live_edges: list[LiveEdge]) -> None:
    e = LiveEdge(tmp_path / "e", "", "node-e", follow_queue_rows=5000)
    live_edges.append(e)
    sql = 'SELECT \'node-e\' AS "node", "pid", "comm", "cgroup_path" FROM "oom_events"'
    # no BDP probing: the receive window stays small, so the edge soon cannot send on
    with grpc.insecure_channel(e.address, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        call = pxo_pb2_grpc.EdgeStub(ch).Follow(pxo_pb2.FollowRequest(table="oom_events", sql=sql))
        first = next(call)  # subscribed; from now on this follower reads nothing
        assert arrowipc.decode(first.ipc_stream)[0].names == ["node", "pid", "comm", "cgroup_path"]
        for i in range(40):  # far more than gRPC buffers and the 5000-row queue hold
            e.add(*range(i * 2000, (i + 1) * 2000))
        assert e.store.rows_written == 80_000 and not e.store.write_error
        code, details = None, ""
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:  # not kept: a gRPC call must not outlive the test
            code, details = exc.code(), exc.details()
        del call
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("follower too slow, ") and "rows dropped" in details
    assert e.store.followers() == 0


def test_store_follow_refuses_other_tables_and_reports_drops(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", all_tables(), flush_interval=0.01)
    store.start()
    try:
        from pxo.edge.errors import FragmentError

        with pytest.raises(FragmentError, match="refused"):
            next(store.follow("oom_events", "SELECT * FROM kill_events"))
        with pytest.raises(FragmentError, match="refused"):
            next(store.follow("oom_events", "SELECT * FROM read_csv('/etc/passwd')"))
        g = store.follow("oom_events", 'SELECT "pid" FROM "oom_events"', max_queued_rows=3)
        assert next(g).num_rows == 0
        for pid in range(10):
            store.append("oom_events", oom_row(pid, utcnow()))
            assert store.flush()
        assert store.rows_written == 10
        with pytest.raises(FollowerTooSlow, match="follower too slow, 10 rows dropped"):
            next(g)
        assert store.followers() == 0
    finally:
        store.close()


def test_follow_needs_the_cluster_token(tmp_path: Path, services: list[Service]) -> None:
    token = "t" * 24
    _, addr = start_collector(services, tmp_path / "c", "--cluster-token", token)
    with grpc.insecure_channel(addr) as ch:
        stub = pxo_pb2_grpc.CollectorStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            next(stub.Follow(pxo_pb2.QueryRequest(text="oom_events"), timeout=10))
        code = info.value.code()
        reply = next(stub.Follow(pxo_pb2.QueryRequest(text="oom_events | summarize count()"), timeout=10,
                                 metadata=(("x-pxo-cluster-token", token),)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert reply.WhichOneof("part") == "error"  # with the token it is planned (and refused: summarize)


def test_an_integer_overflow_ends_the_follow_with_the_error_naming_it(
        tmp_path: Path, collector: str, live_edges: list[LiveEdge]) -> None:
    a = LiveEdge(tmp_path / "a", collector, "node-a")
    live_edges.append(a)
    wait_nodes(collector, 1)
    f = Follower(collector, "oom_events | extend headroom = total_vm_bytes - anon_rss_bytes, "
                            "x = pid * anon_rss_bytes * 1TiB | project pid, headroom")
    try:
        f.until(lambda f: f.following("node-a"), "subscription of node-a")
        a.add(0)  # pid 0: x is 0, headroom 2^30 - 2^29
        f.until(lambda f: f.pids() == [0], "row 0")
        assert f.rows[0]["headroom"] == 1 << 29
        a.add(3)  # 3 * 2^29 * 2^40 is beyond 2^63
        f.until(lambda f: f.errors, "the error")
        assert f.errors[0].expression == "pid * anon_rss_bytes * 1TiB"  # what it is about, as a field
        assert f.errors[0].message.startswith("integer overflow in pid * anon_rss_bytes * 1TiB:")
        assert (f.errors[0].line, f.errors[0].column) == (1, 90)
        assert f.pids() == [0]  # the row that overflowed is not streamed
    finally:
        f.close()
