"""CriNames against a real containerd (Debian's), driven through the CRI as the kubelet drives it.

The pods and containers are made with the same proto subset CriNames reads
(proto/pxo/cri/v1/api.proto), so a wrong field number shows up here as a
runtime that rejects a request or answers with empty names.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pxo.edge.runtimes import RuntimeContainer
from pxo.edge.runtimes_cri import CriNames, _one_queue_for_all_clients
from tests.helpers.containerd import Containerd, missing, pause_image

UNKNOWN_ID = "0" * 64


def wait_for(what: str, ok: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    reason = missing()
    if reason and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and this test needs a real containerd: {reason}", pytrace=False)
    if reason:
        pytest.skip(f"no real containerd: {reason}")
    with pause_image() as image, Containerd(image) as ctrd:
        yield ctrd


@pytest.mark.requires_bpf
def test_lookup_names_a_pod_container_from_the_kubelet_labels(containerd: Containerd) -> None:
    pod = containerd.run_pod("oomy", "pxo-test")
    cid = containerd.run_container(pod, "worker")
    names = CriNames("containerd", containerd.socket)
    try:
        assert names.lookup(cid) == RuntimeContainer("worker", namespace="pxo-test", pod="oomy")
        assert names.status.names == 1

        # An id the runtime does not know: a quick None, and NOT_FOUND is an answer, not an error.
        t0 = time.monotonic()
        assert names.lookup(UNKNOWN_ID) is None
        assert time.monotonic() - t0 < 0.5
        assert names.status.errors == 0, names.status.last_error

        # A container made by another CRI client (crictl) has no kubelet labels: its CRI name, no pod.
        bare = containerd.run_container(pod, "bare", labels={})
        assert names.lookup(bare) == RuntimeContainer("bare")
    finally:
        names.stop()


@pytest.mark.requires_bpf
def test_index_lists_at_start_then_learns_new_containers(containerd: Containerd) -> None:
    pod = containerd.run_pod("before", "pxo-test")
    before = containerd.run_container(pod, "early")
    names = CriNames("containerd", containerd.socket)
    names.start()
    try:
        # Known from the list at start, without a lookup (the cache is what the index filled).
        wait_for("the list at start", lambda: names._cache.get(before) is not None, 5)
        assert names._cache.get(before) == RuntimeContainer("early", namespace="pxo-test", pod="before")
        assert names.status.connected
        wait_for("the watch mode", lambda: names.mode != "", 5)
        logging.getLogger(__name__).info("containerd %s: new containers by %s",
                                         containerd.version.runtime_version, names.mode)

        late_pod = containerd.run_pod("after", "pxo-other")
        late = containerd.run_container(late_pod, "late")
        # By an event, or by the next list (every ``poll`` s) when the runtime has no event stream.
        wait_for(f"the new container by {names.mode}", lambda: names._cache.get(late) is not None, names.poll + 3)
        assert names.lookup(late) == RuntimeContainer("late", namespace="pxo-other", pod="after")
        assert names.status.errors == 0, names.status.last_error
    finally:
        t0 = time.monotonic()
        names.stop()
    assert time.monotonic() - t0 < 2  # closing the channel ends the stream or the wait at once


def test_a_runtime_that_is_not_there_is_an_error_in_status_not_for_the_caller(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = CriNames("containerd", tmp_path / "containerd.sock", retry=0.1)
    with caplog.at_level(logging.WARNING, logger="pxo.edge.runtimes_cri"):
        t0 = time.monotonic()
        assert names.lookup("a" * 64) is None
        assert names.lookup("b" * 64) is None
        assert time.monotonic() - t0 < 1.5
        names.start()
        wait_for("the background thread's failures", lambda: names.status.errors >= 4, 5)
        names.stop()
    assert not names.status.connected
    assert "UNAVAILABLE" in names.status.last_error
    assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]  # once per distinct message


@pytest.mark.parametrize(("name", "version", "one_queue"), [
    ("containerd", "1.6.20~ds1", False),  # no events at all: UNIMPLEMENTED
    ("containerd", "1.7.24~ds1", True),
    ("containerd", "v1.7.23-k3s2", True),
    ("containerd", "2.1.9+unknown", False),
    ("containerd", "v2.0.0", False),
    ("cri-o", "1.25.4", False),  # an empty stream
    ("cri-o", "1.26.4", True),
    ("cri-o", "1.27.8", True),
    ("cri-o", "1.28.0", False),
    ("some-runtime", "1.7.0", False),
    ("containerd", "unknown", False),
])
def test_runtimes_whose_event_stream_pxo_must_not_read(name: str, version: str, one_queue: bool) -> None:
    assert _one_queue_for_all_clients(name, version) is one_queue
