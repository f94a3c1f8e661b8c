"""Answers streamed end to end through the cloud, and `--follow` over HTTP and from the
CLI: a real collector and cloud as processes, an edge in this process (so the test can
commit rows into its store while someone follows), real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tests.helpers.liveedge import LiveEdge
from tests.helpers.seeding import wait_nodes
from tests.helpers.services import Service, bootstrap, call, start_cloud, start_collector

NDJSON = "application/x-ndjson"


class Live:
    def __init__(self, root: Path, services: list[Service], edges: list[LiveEdge]) -> None:
        _, self.collector = start_collector(services, root / "collector", "--heartbeat-interval", "0.5",
                                            "--expire-after", "2")
        self.edge = LiveEdge(root / "edge", self.collector, "node-1")
        edges.append(self.edge)
        self.edge.add(101, 102)
        wait_nodes(self.collector, 1)
        _, self.url = start_cloud(services, root / "cloud", self.collector)
        self.key = bootstrap(root / "cloud")


@pytest.fixture
def live(tmp_path: Path, services: list[Service]) -> Iterator[Live]:
    edges: list[LiveEdge] = []
    try:
        yield Live(tmp_path, services, edges)
    finally:
        for e in edges:
            e.stop()


class Lines:
    """An open streamed HTTP answer, its lines read by a thread (so waits have deadlines)."""

    def __init__(self, url: str, key: str, body: dict[str, Any]) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        self.conn.request("POST", "/api/v1/query/follow", body=json.dumps(body), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": NDJSON})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        self.objects: list[dict[str, Any]] = []
        self._q: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                self._q.put(json.loads(line))
        except Exception as exc:  # the test closed the response
            self._q.put(exc)
        self._q.put(None)

    def until(self, done: Any, what: str, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not done(self.objects):
            try:
                obj = self._q.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {timeout} s: {self.objects}") from None
            if obj is None or isinstance(obj, Exception):
                raise AssertionError(f"the stream ended before {what}: {self.objects} ({obj})")
            self.objects.append(obj)

    def rows(self) -> list[list[Any]]:
        return [o["row"] for o in self.objects if "row" in o]

    def close(self) -> None:
        """Hang up, as a client that goes away does (the reading thread sees the end)."""
        assert self.conn.sock is not None
        self.conn.sock.shutdown(socket.SHUT_RDWR)


def following(node: str) -> Any:
    return lambda objs: any(n["node"] == node and n["state"] == "ok" and n["detail"].startswith("following")
                            for o in objs for n in o.get("nodes", ()))


def test_follow_over_http_streams_rows_and_ends_with_the_client(live: Live) -> None:
    f = Lines(live.url, live.key, {"query": 'oom_events | where pid >= 200 | project node, pid, comm'})
    assert f.resp.getheader("Content-Type", "").startswith(NDJSON)
    try:
        f.until(following("node-1"), "node-1 following")
        assert f.objects[0]["columns"] == [{"name": "node", "type": "string"}, {"name": "pid", "type": "int32"},
                                           {"name": "comm", "type": "string"}]
        live.edge.add(5, 200, 6, 201)
        f.until(lambda objs: any("row" in o and o["row"][1] == 201 for o in objs), "row 201")
        assert f.rows() == [["node-1", 200, "proc200"], ["node-1", 201, "proc201"]]
        assert live.edge.store.followers() == 1
    finally:
        f.close()
    # the client went away: the cloud cancels its gRPC call, the collector its edges' streams
    end = time.monotonic() + 20
    while live.edge.store.followers() and time.monotonic() < end:
        time.sleep(0.05)
    assert live.edge.store.followers() == 0


def test_follow_refusals_are_http_errors(live: Live) -> None:
    url = live.url + "/api/v1/query/follow"
    text = "oom_events | where pid > 1 | top 5 by pid"
    status, body, _, _ = call("POST", url, {"query": text}, key=live.key)
    assert status == 400 and body["error"]["code"] == "bad_query"
    assert body["error"]["message"].startswith("--follow streams rows as they arrive")
    assert body["error"]["column"] == text.index("top") + 1
    status, body, _, _ = call("POST", url, {"query": "oom_events", "sql": True}, key=live.key)
    assert status == 422  # there is no SQL form of follow
    status, body, _, _ = call("POST", url, {"query": "oom_events"}, key=live.key, headers={"Accept": "text/csv"})
    assert status == 406
    status, _, _, _ = call("POST", url, {"query": "oom_events"})
    assert status == 401


def test_answers_stream_with_the_summary_last(live: Live) -> None:
    q = {"query": "oom_events | last 1h | project pid, comm"}
    status, body, hdrs, raw = call("POST", live.url + "/api/v1/query", q, key=live.key)
    assert status == 200 and [r[0] for r in body["rows"]] == [101, 102]
    assert body["nodes"] == [{"node": "node-1", "state": "ok", "detail": "", "rows": 2}]
    assert body["partial"] is False and body["truncated"] is False and body["range"]["start"]
    assert body["approximate_columns"] == [] and body["relative_error"] == 0 and body["cluster"] == "default"
    assert raw.index(b'"rows"') < raw.index(b'"nodes"')  # the summary comes after the rows
    assert hdrs["x-pxo-cluster"] == "default"

    status, _, hdrs, raw = call("POST", live.url + "/api/v1/query", q, key=live.key, headers={"Accept": NDJSON})
    lines = [json.loads(x) for x in raw.splitlines()]
    assert status == 200 and hdrs["content-type"].startswith(NDJSON)
    assert lines[0]["columns"][0] == {"name": "pid", "type": "int32"}
    assert [x["row"] for x in lines[1:-1]] == [[101, "proc101"], [102, "proc102"]]
    assert lines[-1]["summary"]["nodes"][0]["state"] == "ok" and lines[-1]["summary"]["partial"] is False

    arrow = "application/vnd.apache.arrow.stream"
    status, _, _, raw = call("POST", live.url + "/api/v1/query", q, key=live.key, headers={"Accept": arrow})
    reader = pa.ipc.open_stream(raw)
    batches = []
    while True:
        try:
            batches.append(reader.read_next_batch_with_custom_metadata())
        except StopIteration:
            break
    assert pa.Table.from_batches([b.batch for b in batches]).column("pid").to_pylist() == [101, 102]
    trailer = batches[-1]
    assert trailer.batch.num_rows == 0
    summary = json.loads(trailer.custom_metadata[b"pxo.summary"])
    assert summary["nodes"][0]["node"] == "node-1" and summary["truncated"] is False

    # an error before any row is still an HTTP error, whatever the format
    for accept in ("application/json", NDJSON, arrow):
        status, body, _, raw = call("POST", live.url + "/api/v1/query", {"query": "oom_events | last 1h | x"},
                                    key=live.key, headers={"Accept": accept})
        assert status == 400, raw
        assert json.loads(raw)["error"]["column"] == 24


def _lines_into(stream: Any, q: queue.Queue[str]) -> None:
    for line in stream:
        q.put(line)


def test_cli_follow_prints_new_rows_and_exits_0_on_ctrl_c(live: Live, tmp_path: Path) -> None:
    env = {**os.environ, "PXO_API_URL": live.url, "PXO_API_KEY": live.key, "XDG_CONFIG_HOME": str(tmp_path / "c")}
    for fmt, check in (("json", lambda line: json.loads(line)["pid"] == 300),
                       ("table", lambda line: line.split()[:2] == ["node-1", "300"])):
        p = subprocess.Popen([sys.executable, "-m", "pxo.cli.main", "query", "--follow", "-o", fmt,
                              "oom_events | where pid >= 300 | project node, pid, comm"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            err: queue.Queue[str] = queue.Queue()
            threading.Thread(target=_lines_into, args=(p.stderr, err), daemon=True).start()
            line = err.get(timeout=30)  # node changes go to stderr: node-1 is followed
            assert line.startswith("node-1: ok: following"), line
            live.edge.add(7, 300)
            out = p.stdout.readline()
            if fmt == "table":
                assert out.split() == ["NODE", "PID", "COMM"]
                out = p.stdout.readline()
            assert check(out), out
            p.send_signal(signal.SIGINT)
            assert p.wait(timeout=20) == 0
            rest = []
            while not err.empty():
                rest.append(err.get())
            assert "Traceback" not in "".join(rest) and p.stdout.read() == "", rest
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


def _follow_status(url: str, key: str, body: dict[str, Any]) -> int:
    """The status a follow request gets (a stream that opens is closed again at once)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("POST", "/api/v1/query/follow", body=json.dumps(body), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_follow_streams_are_capped_per_cloud_and_given_back(tmp_path: Path, services: list[Service]) -> None:
    # The cloud serves 16 follow streams at once; a collector 8: two clusters fill the cloud.
    edges: list[LiveEdge] = []
    try:
        addrs = []
        for name in ("a", "b"):
            _, addr = start_collector(services, tmp_path / name, "--heartbeat-interval", "0.5")
            edges.append(LiveEdge(tmp_path / f"edge-{name}", addr, f"node-{name}", max_followers=16))
            wait_nodes(addr, 1)
            addrs.append(addr)
        _, url = start_cloud(services, tmp_path / "cloud", addrs[0])
        key = bootstrap(tmp_path / "cloud")
        assert call("POST", url + "/api/v1/clusters", {"name": "b", "address": addrs[1]}, key=key)[0] == 201
        streams = [Lines(url, key, {"query": "oom_events", "cluster": c}) for c in ("default", "b") for _ in range(8)]
        try:
            status, body, _, _ = call("POST", url + "/api/v1/query/follow", {"query": "oom_events"}, key=key)
            assert status == 503 and body["error"]["code"] == "unavailable", body
            assert "16 follow streams" in body["error"]["message"]
            streams.pop().close()  # a client goes away: its slot comes back (once the collector's does too)
            end = time.monotonic() + 20
            while (status := _follow_status(url, key, {"query": "oom_events", "cluster": "b"})) != 200:
                assert time.monotonic() < end, status
                time.sleep(0.2)
        finally:
            for s in streams:
                s.close()
    finally:
        for e in edges:
            e.stop()
