"""One backoff for every retry loop: exponential, capped, with jitter (so that a fleet of
edges that lost their peer at the same moment does not retry in lockstep)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable


class Backoff:
    """``wait(stop)`` sleeps the next delay (first, 2 x first, ... up to ``cap``, each +/- ``jitter``)
    unless ``stop`` is set; ``reset()`` after a success starts over from ``first``."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, *, jitter: float = 0.2,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, not {first}, {cap}")
        self.first, self.cap, self.jitter = first, cap, jitter
        self._uniform = uniform
        self.failures = 0

    def delay(self) -> float:
        """The delay before the next attempt, counting this failure."""
        base: float = min(self.first * 2.0 ** min(self.failures, 62), self.cap)
        self.failures += 1
        return base * self._uniform(1 - self.jitter, 1 + self.jitter)

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay; True when ``stop`` was set meanwhile (stop retrying)."""
        return stop.wait(self.delay())

    def reset(self) -> None:
        self.failures = 0


# The pauses before starting again something that failed, by failures in a row (the last one
# repeats): a source of the edge (edge/sources/base.py) and a component of a local deployment
# (common/supervise.py). Fixed steps rather than ``Backoff``: one process, nobody in lockstep.
RESTART_DELAYS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
