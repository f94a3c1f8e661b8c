"""The lifecycle every source shares (edge/sources/base.py): stop() against a source that its own
thread is opening again after a failure. No kernel needed: the source here holds a counted
resource, and what matters is that open() and close() never overlap and nothing is left open."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from pxo.edge.sources.base import Source, SourceContext


class _Rows:
    def append(self, table: str, row: Mapping[str, Any]) -> None:
        pass


class _SlowToReopen(Source):
    """Fails its first poll; its second open() waits for ``proceed`` (a program being compiled)."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__(SourceContext(sink=_Rows()))
        self.opens = 0
        self.held = 0  # resources open()ed and not close()d
        self.inside_open = False
        self.overlaps: list[str] = []
        self.reopening = threading.Event()
        self.proceed = threading.Event()
        self.polls = 0

    def open(self) -> None:
        self.inside_open = True
        try:
            self.opens += 1
            if self.opens == 2:
                self.reopening.set()
                assert self.proceed.wait(30)
            self.held += 1
        finally:
            self.inside_open = False

    def poll(self, timeout: float) -> None:
        self.polls += 1
        if self.polls == 1:
            raise OSError("the ring's epoll set went away")
        time.sleep(timeout)

    def close(self) -> None:
        if self.inside_open:
            self.overlaps.append("close() while open() ran")
        self.held = max(0, self.held - 1)


def _wait(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("proceed_before_stop_gives_up", [True, False],
                         ids=["open-ends-while-stop-waits", "stop-gives-up-first"])
def test_stop_while_the_source_is_opened_again_never_overlaps_and_leaves_nothing_open(
        proceed_before_stop_gives_up: bool) -> None:
    src = _SlowToReopen()
    src.RESTART_DELAYS = (0.01,)
    src.STOP_WAIT = 0.5
    src.start()
    assert src.reopening.wait(10), "the source was never opened again"
    stopper = threading.Thread(target=src.stop)
    stopper.start()
    if proceed_before_stop_gives_up:
        time.sleep(0.7)  # past the thread's join, inside stop()'s wait for the open under way
        src.proceed.set()
        stopper.join(10)
        assert not stopper.is_alive()
    else:
        stopper.join(10)  # stop() returns on its own, leaving the close to the thread
        assert not stopper.is_alive()
        assert src.inside_open  # still opening; stop() closed nothing under it
        src.proceed.set()
    _wait(lambda: src._thread is not None and not src._thread.is_alive(), "the source's thread did not end")
    assert src.overlaps == []
    assert src.held == 0, "what the second open() acquired was left open"
    assert src.restarts == 0  # stopped, not running again
    assert src.status.state != "running"


def test_stop_during_the_pause_before_opening_again_opens_nothing() -> None:
    src = _SlowToReopen()
    src.RESTART_DELAYS = (3600.0,)
    src.start()
    _wait(lambda: src.status.state == "failed", "the poll's failure was not seen")
    src.stop()
    assert src.opens == 1 and src.held == 0 and src.overlaps == []
