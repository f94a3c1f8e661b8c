"""edge/watchdog.py: a loop that hangs is found, named with the stack where it is stuck, and the
edge exits to be started again. Real threads, a real store whose writer is made to hang, and a
real edge process under the real supervisor whose source is made to hang."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pxo.common.addr import read_addr_file
from pxo.common.probe import check
from pxo.common.timeutil import utc_now
from pxo.edge import store as store_module
from pxo.edge.sources import all_tables
from pxo.edge.sources.base import Source, SourceContext
from pxo.edge.store import Store
from pxo.edge.watchdog import EXIT_STALLED, Busy, Stall, Watchdog


def _wait(cond: Any, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.02)


def _watch(*marks: Busy, stall_after: float = 0.3) -> tuple[Watchdog, list[Stall]]:
    found: list[Stall] = []
    dog = Watchdog(lambda: marks, stall_after=stall_after, on_stall=found.append, period=0.05)
    dog.start()
    return dog, found


def stuck_in_a_read(release: threading.Event) -> None:
    release.wait(30)


def test_a_loop_busy_past_the_limit_is_named_with_where_it_is_stuck() -> None:
    busy, other, release = Busy("source hang"), Busy("source fine"), threading.Event()

    def loop() -> None:
        with busy:
            stuck_in_a_read(release)

    t = threading.Thread(target=loop)
    t.start()
    dog, found = _watch(other, busy)
    try:
        _wait(lambda: found, "the stuck loop was not found")
    finally:
        release.set()
        t.join()
        dog.stop()
    time.sleep(0.2)
    assert len(found) == 1, "reported once, then the watchdog stops looking"
    assert found[0].name == "source hang" and found[0].seconds > 0.3
    assert "stuck_in_a_read" in found[0].stack and "release.wait" in found[0].stack


def test_short_pieces_of_work_and_waiting_for_work_are_never_a_stall() -> None:
    busy, stop = Busy("store writer"), threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with busy:
                time.sleep(0.05)  # a commit
            stop.wait(1.5)  # waiting for rows, longer than the limit: not marked

    t = threading.Thread(target=loop)
    t.start()
    dog, found = _watch(busy, stall_after=1.0)
    time.sleep(3.5)
    stop.set()
    t.join()
    dog.stop()
    assert found == []


class _Rows:
    def append(self, table: str, row: Mapping[str, Any]) -> None:
        pass


class _HangsOnSecondPoll(Source):
    name = "hangs"

    def __init__(self, delays: tuple[float, ...] = (0.01,)) -> None:
        super().__init__(SourceContext(sink=_Rows()))
        self.RESTART_DELAYS = delays
        self.polls = 0
        self.release = threading.Event()
        self.fail_first = False

    def open(self) -> None:
        pass

    def poll(self, timeout: float) -> None:
        self.polls += 1
        if self.polls == 1 and self.fail_first:
            raise OSError("gone")
        if self.polls == 2 and not self.fail_first:
            stuck_in_a_read(self.release)
        time.sleep(timeout)


def test_a_source_whose_poll_hangs_is_a_stall_and_one_paused_after_a_failure_is_not() -> None:
    hanging = _HangsOnSecondPoll()
    paused = _HangsOnSecondPoll(delays=(3600.0,))
    paused.fail_first = True  # then waits an hour to open again: a wait, not work
    hanging.start()
    paused.start()
    dog, found = _watch(hanging.busy, paused.busy)
    try:
        _wait(lambda: found, "the hanging source was not found")
        assert paused.status.state == "failed"
    finally:
        dog.stop()
        hanging.release.set()
        hanging.stop()
        paused.stop()
    assert [s.name for s in found] == ["source hangs"]
    assert "stuck_in_a_read" in found[0].stack


def test_a_store_writer_that_hangs_is_a_stall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "s.duckdb", all_tables(), flush_interval=0.05)
    store.start()
    release = threading.Event()
    build = store_module.arrowout.build

    def build_that_hangs(*args: Any, **kwargs: Any) -> Any:
        stuck_in_a_read(release)
        return build(*args, **kwargs)

    dog, found = _watch(store.writer_busy)
    try:
        monkeypatch.setattr(store_module.arrowout, "build", build_that_hangs)
        store.append("probe_status", {"time": utc_now(), "source": "x", "state": "running", "detail": "",
                                      "events": 0, "lost": 0})
        _wait(lambda: found, "the hung writer was not found")
    finally:
        release.set()
        monkeypatch.undo()
        dog.stop()
        store.close()
    assert found[0].name == "store writer"
    assert "_flush" in found[0].stack and "stuck_in_a_read" in found[0].stack


_HANGING_EDGE = '''
import sys, threading
from pathlib import Path
from pxo.edge.sources.cgroupfs import ContainerMemorySource

MARKER = Path(sys.argv.pop(1))
poll = ContainerMemorySource.poll

def poll_that_hangs_once_told_to(self, timeout):
    if MARKER.exists():
        threading.Event().wait()  # a read that never returns
    return poll(self, timeout)

ContainerMemorySource.poll = poll_that_hangs_once_told_to
from pxo.edge.main import main
sys.exit(main())
'''


def test_an_edge_whose_source_hangs_says_not_serving_exits_and_is_started_again(tmp_path: Path) -> None:
    script = tmp_path / "hanging_edge.py"
    script.write_text(_HANGING_EDGE)
    marker, data = tmp_path / "hang", tmp_path / "edge"
    addr_file, log_path = data / "edge.addr", tmp_path / "edge.log"
    data.mkdir()
    command = [sys.executable, "-m", "pxo.common.supervise", "--name", "edge", "--addr-file", str(addr_file), "--",
               sys.executable, str(script), str(marker), "--listen", "127.0.0.1:0", "--data-dir", str(data),
               "--sources", "cgroupfs", "--runtime-dir", str(tmp_path / "run"), "--stall-seconds", "3"]
    with open(log_path, "ab") as out:
        sup = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    log = lambda: log_path.read_text(errors="replace")  # noqa: E731
    try:
        _wait(lambda: read_addr_file(addr_file) or sup.poll() is not None, "", timeout=60)
        assert sup.poll() is None, f"the edge did not serve:\n{log()}"
        address = read_addr_file(addr_file)
        assert check("grpc", address) == ""
        marker.touch()  # from its next poll on, cgroupfs (container memory) hangs
        seen_not_serving = False
        end = time.monotonic() + 60
        while f"exit status {EXIT_STALLED}" not in log():
            assert time.monotonic() < end, f"the hung edge did not exit:\n{log()}"
            health = check("grpc", address, timeout=0.5)
            seen_not_serving |= health.startswith("gRPC health") and "UNAVAILABLE" not in health
            time.sleep(0.05)
        marker.unlink()  # the next edge runs normally
        assert seen_not_serving, f"the hung edge never said NOT_SERVING:\n{log()}"
        text = log()
        assert "source cgroupfs has made no progress for" in text
        assert "poll_that_hangs_once_told_to" in text  # the stack, where it is stuck
        assert "starting it again" in text
        _wait(lambda: text.count("serving on") < log().count("serving on") and read_addr_file(addr_file),
              f"the edge was not started again:\n{log()}", timeout=60)
        assert read_addr_file(addr_file) == address  # on the same address
        _wait(lambda: check("grpc", address) == "", f"the new edge is not SERVING:\n{log()}")
    finally:
        sup.terminate()
        rc = sup.wait(30)
    assert rc == 0, log()
