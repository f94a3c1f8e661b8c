"""Request limits on a real uvicorn: body size, query length, per-key rate, slow clients; the follow
streams' cap under racing threads."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from pxo.cloud.errors import ServiceUnavailable
from pxo.cloud.limits import FollowSlots
from pxo.common.slots import Slot
from tests.helpers.services import Service, call, start_lone_cloud


def test_body_and_query_length_limits(tmp_path: Path, services: list[Service]) -> None:
    url, key = start_lone_cloud(services, tmp_path, "--max-body-bytes", "2048", "--max-query-length", "100")
    status, body, _, _ = call("POST", url + "/api/v1/query", data=b"{" + b" " * 4096 + b"}", key=key)
    assert status == 413 and body["error"]["code"] == "too_large"
    status, body, _, _ = call("POST", url + "/api/v1/query", {"query": "x" * 101}, key=key)
    assert status == 413 and "over 100 characters" in body["error"]["message"]
    # a body sent in chunks, with no Content-Length, is counted as it arrives
    host, port = urlparse(url).hostname, urlparse(url).port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(3):
            s.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
        s.sendall(b"0\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 413")


def test_rate_limit_per_key_with_retry_after(tmp_path: Path, services: list[Service]) -> None:
    url, key = start_lone_cloud(services, tmp_path, "--rate-limit", "0.5", "--rate-burst", "3")
    status, made, _, _ = call("POST", url + "/api/v1/keys", {"label": "other"}, key=key)
    assert status == 201
    statuses = [call("GET", url + "/api/v1/whoami", key=key)[0] for _ in range(2)]
    assert statuses == [200, 200]
    status, body, hdrs, _ = call("GET", url + "/api/v1/whoami", key=key)
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 1 <= int(hdrs["retry-after"]) <= 2 and body["error"]["retry_after"] == int(hdrs["retry-after"])
    assert call("GET", url + "/api/v1/health")[0] == 200  # no key, no bucket
    # another key has its own bucket
    assert [call("GET", url + "/api/v1/whoami", key=made["key"])[0] for _ in range(4)] == [200, 200, 200, 429]
    time.sleep(int(hdrs["retry-after"]))
    assert call("GET", url + "/api/v1/whoami", key=key)[0] == 200


def test_slow_client_is_cut_off(tmp_path: Path, services: list[Service]) -> None:
    url, key = start_lone_cloud(services, tmp_path, "--read-timeout", "1")
    host, port = urlparse(url).hostname, urlparse(url).port
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST /api/v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode())
        start = time.monotonic()
        answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5
    # meanwhile the server still answers others
    assert call("GET", url + "/api/v1/health")[0] == 200


def test_follow_slots_hold_one_cap_under_racing_threads() -> None:
    slots = FollowSlots(cap=16)
    taken: list[Slot] = []
    refused: list[ServiceUnavailable] = []
    lock = threading.Lock()
    start = threading.Barrier(64)

    def take() -> None:
        start.wait()
        try:
            slot = slots.take()
        except ServiceUnavailable as exc:
            with lock:
                refused.append(exc)
            return
        with lock:
            taken.append(slot)

    threads = [threading.Thread(target=take) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 16 and len(refused) == 48 and slots.active == 16
    assert refused[0].status == 503 and "16 follow streams" in refused[0].message
    taken[0].release()
    taken[0].release()  # given back once, however often it is released
    assert slots.active == 15
    slots.take()
    with pytest.raises(ServiceUnavailable):
        slots.take()
