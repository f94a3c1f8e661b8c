"""The one backoff: doubling, capped, jittered, reset after a success, stopped by its event."""

from __future__ import annotations

import threading

import pytest

from pxo.common.backoff import Backoff


def test_doubles_up_to_the_cap_and_starts_over_after_reset() -> None:
    b = Backoff(0.5, 4.0, uniform=lambda lo, hi: 1.0)
    assert [b.delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.delay() == 0.5


def test_jitter_stays_within_its_bounds() -> None:
    b = Backoff(1.0, 1.0, jitter=0.2)
    assert all(0.8 <= b.delay() <= 1.2 for _ in range(200))


def test_a_set_event_ends_the_wait_at_once() -> None:
    stop = threading.Event()
    stop.set()
    assert Backoff(60.0, 60.0).wait(stop) is True


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
