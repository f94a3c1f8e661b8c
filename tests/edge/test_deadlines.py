"""edge/deadlines.py: the one thread that stops queries past their deadline."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pxo.edge.deadlines import Deadlines


@pytest.fixture
def d() -> Iterator[Deadlines]:
    deadlines = Deadlines()
    yield deadlines
    deadlines.close()


def test_an_action_runs_at_its_deadline_unless_cancelled(d: Deadlines) -> None:
    fired, kept = threading.Event(), threading.Event()
    d.cancel(d.arm(0.05, kept.set))
    d.arm(0.1, fired.set)
    assert fired.wait(10)
    assert not kept.is_set()
    assert d.pending() == 0


def test_a_deadline_armed_later_but_earlier_wakes_the_thread(d: Deadlines) -> None:
    order: list[str] = []
    done = threading.Event()
    d.arm(3600, lambda: order.append("an hour"))  # the thread sleeps until this one...
    d.arm(0.05, lambda: (order.append("soon"), done.set()))  # ...and must wake for this one
    assert done.wait(10), "the earlier deadline waited for the later one"
    assert order == ["soon"]
    assert d.pending() == 1


def test_a_failing_action_does_not_stop_the_others(d: Deadlines) -> None:
    after = threading.Event()

    def fail() -> None:
        raise RuntimeError("the cursor was closed meanwhile")

    d.arm(0.01, fail)
    d.arm(0.05, after.set)
    assert after.wait(10)


def test_cancelled_deadlines_do_not_pile_up(d: Deadlines) -> None:
    for _ in range(10_000):  # a busy edge: every query cancels its deadline as it ends
        d.cancel(d.arm(30, lambda: None))
    assert d.pending() == 0
    assert len(d._heap) <= 130


def test_closed_deadlines_run_nothing_and_refuse_more() -> None:
    d = Deadlines()
    ran = threading.Event()
    d.arm(0.05, ran.set)
    d.close()
    assert not ran.wait(0.3)
    try:
        d.arm(1, ran.set)
    except RuntimeError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("arm() after close() was accepted")
