"""The explain rules on recorded series (edge/verdicts.py is pure: no store, no kernel).

The series here are ones real runs recorded; tests/edge/test_explain.py makes each rule
happen on a real kill."""

from __future__ import annotations

import datetime as dt

from pxo.edge.verdicts import Evidence, Point, spike, verdicts

MiB = 1 << 20
T0 = dt.datetime(2026, 12, 7, 15, 22, 29, 636348)


def _evidence(points: list[tuple[float, float]], kill_at: float, limit: int = 64 * MiB) -> Evidence:
    series = [Point(T0 + dt.timedelta(seconds=t), int(a), limit, int(a), 0, 0) for t, a in points]
    kill = {"time": T0 + dt.timedelta(seconds=kill_at), "memcg_limit_bytes": limit}
    return Evidence(kill=kill, kind="oom", series=series)


def test_a_sample_taken_during_the_allocation_is_the_climb() -> None:
    """A CI run's series: flat at 4.5 MiB, sampled every 5 s, the last sample landing while the
    120 MiB allocation was under way (12.5 MiB). It used to end the flat part there, whose range
    then exceeded a tenth of the limit: no rule fitted."""
    e = _evidence([(0.0, 4767744), (5.003, 4767744), (10.004, 4767744), (14.005, 13107200)], kill_at=14.3)
    v = spike(e)
    assert v is not None and v.numbers["before_bytes"] == 4767744
    assert 4.0 <= v.numbers["seconds"] <= 4.5  # from the last flat sample, not the one in the climb
    assert [x.rule for x in verdicts(e)] == ["spike"]


def test_a_spike_sampled_only_before_it() -> None:
    e = _evidence([(0.0, 4 * MiB), (5.0, 4.2 * MiB), (10.0, 4.1 * MiB)], kill_at=12.0)
    v = spike(e)
    assert v is not None and v.numbers["seconds"] == 2.0


def test_what_is_not_a_spike() -> None:
    # the flat part too short
    assert spike(_evidence([(0.0, 4 * MiB), (3.0, 4 * MiB), (4.0, 20 * MiB)], kill_at=5.0)) is None
    # flat, but long before the kill
    assert spike(_evidence([(0.0, 4 * MiB), (5.0, 4 * MiB), (10.0, 4 * MiB)], kill_at=25.0)) is None
    # never flat: a climb from the start
    assert spike(_evidence([(float(t), (4 + 3 * t) * MiB) for t in range(9)], kill_at=9.5)) is None
    # flat, then a dip below it before the kill: not a climb
    assert spike(_evidence([(0.0, 10 * MiB), (5.0, 10 * MiB), (8.0, 2 * MiB)], kill_at=9.0)) is None
    # flat but high: more than half the limit
    assert spike(_evidence([(0.0, 40 * MiB), (5.0, 40 * MiB), (10.0, 40 * MiB)], kill_at=11.0)) is None
