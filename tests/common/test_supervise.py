"""common/supervise.py with a real component (the collector, which needs no root): started
again on its own address when it crashes after serving, not when it fails at start, and
never outliving its supervisor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pxo.common.spawn import Component, ComponentFailed
from pxo.common.supervise import same_address
from tests.helpers.seeding import wait_nodes
from tests.helpers.services import children


def test_a_port_zero_becomes_the_port_it_bound() -> None:
    assert same_address(["--listen", "127.0.0.1:0", "--data-dir", "/d"], "127.0.0.1:40123") == \
        ["--listen", "127.0.0.1:40123", "--data-dir", "/d"]
    assert same_address(["--listen=[::1]:0"], "[::1]:40123") == ["--listen=[::1]:40123"]
    assert same_address(["serve", "--host", "127.0.0.1", "--port", "0", "--collector", "127.0.0.1:0"],
                        "http://127.0.0.1:8701") == \
        ["serve", "--host", "127.0.0.1", "--port", "8701", "--collector", "127.0.0.1:0"]  # only its own
    fixed = ["--listen", "127.0.0.1:50700"]
    assert same_address(fixed, "127.0.0.1:50700") == fixed


def _collector(tmp_path: Path, *extra: str) -> Component:
    return Component("collector", ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "c"), *extra],
                     addr_file=tmp_path / "c" / "collector.addr", log_path=tmp_path / "collector.log",
                     supervised=True)


def _child(sup: Component, timeout: float = 20.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kids = children(sup.pid)
        if kids:
            assert len(kids) == 1, kids
            return kids[0]
        time.sleep(0.05)
    raise AssertionError(f"no component under the supervisor:\n{sup.log()}")


def _gone(pid: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_component_that_crashes_after_serving_is_started_again_on_its_address(tmp_path: Path) -> None:
    sup = _collector(tmp_path)
    try:
        addr = sup.wait_addr(30)
        wait_nodes(addr, 0)
        first = _child(sup)
        for delay in (1, 2):  # crashes in a row wait longer each time
            crashed = _child(sup)
            os.kill(crashed, signal.SIGKILL)
            assert _gone(crashed)
            assert sup.wait_addr(30) == addr  # on the port it bound first, though it was given 0
            wait_nodes(addr, 0)  # and it answers there
            assert _child(sup) != crashed
            assert "collector ended after" in sup.log() and f"starting it again in {delay} s" in sup.log()
        assert _child(sup) != first and sup.proc.poll() is None
        last = _child(sup)
        os.kill(last, signal.SIGTERM)  # it ends as if told to stop, but not by its supervisor: status 0
        assert sup.proc.wait(timeout=30) == 0
        assert "collector ended (exit status 0)" in sup.log()
    finally:
        sup.stop()


def test_a_supervisor_told_to_stop_stops_its_component_or_its_pause(tmp_path: Path) -> None:
    sup = _collector(tmp_path)
    try:
        sup.wait_addr(30)
        child = _child(sup)
    finally:
        status = sup.stop()  # SIGTERM to the supervisor: passed on, both end
    assert status == 0, sup.log()
    assert _gone(child)

    sup = _collector(tmp_path)
    sup.wait_addr(30)
    crashed = _child(sup)
    os.kill(crashed, signal.SIGKILL)
    assert _gone(crashed)
    assert sup.stop(timeout=0.5) == 0  # within its 1 s pause: at once, nothing started again
    assert "stopped while collector was down" in sup.log() and children(sup.pid) == []


def test_a_component_that_fails_at_start_is_not_started_again(tmp_path: Path) -> None:
    sup = _collector(tmp_path, "--heartbeat-interval", "-1")
    with pytest.raises(ComponentFailed, match=r"exited at start \(status 2\)"):
        sup.wait_addr(30)
    assert sup.proc.returncode == 2
    log = sup.log()
    assert "exited before it served (exit status 2): not starting it again" in log
    assert log.count("started collector") == 1, log


def test_a_component_ends_with_its_supervisor(tmp_path: Path) -> None:
    sup = _collector(tmp_path)
    try:
        sup.wait_addr(30)
        child = _child(sup)
        sup.proc.send_signal(signal.SIGKILL)  # the supervisor dies, nothing passed on
        sup.proc.wait()
        assert _gone(child), "the component outlived its supervisor"
    finally:
        sup.stop()
