"""oom_risk: for every memory cgroup with a limit, how long until it reaches it.

Every ``period`` seconds (1 s) the source reads, for each cgroup that has a memory
limit (found by walking the hierarchy every ``discover_every`` periods, 3 s):

- usage, and the memory it holds that reclaim cannot give back:
  ``nonreclaimable = usage - (file - shmem)``. Page cache (file pages that are not
  tmpfs or shared memory) is dropped by the kernel before it OOM-kills anyone, so a
  cgroup full of page cache is not at risk: counting it would warn about every
  workload that reads files.
- the growth of that figure: the Theil-Sen slope (the median of the slopes between
  every pair of samples) over the last ``window`` samples. One wild sample moves a
  median of pairwise slopes hardly at all (it tolerates about 29% of outliers), where
  a least-squares fit or a last-two-samples difference would swing with it. The lower
  of that slope and the same without the window's largest single rise is taken: one
  step up (data loaded once, then flat) is not growth.
- ``eta_seconds = (limit - nonreclaimable) / growth`` when the growth is real:
  at least ``min_growth`` bytes/s, at least ``min_samples`` samples, rising over
  the window as a whole (its last sample above its first), and a climb over the window
  at least ``noise_ratio`` (2) times the band the values wander in around that slope
  (``noise_band``). NULL otherwise: a cgroup that sits high but flat, or goes up and
  down between two levels, is not about to be killed.
- PSI (``memory.pressure``): some/full avg10, and the stall time of the period (the
  growth of ``some total``), when the kernel has PSI for the cgroup.

A row is written for a cgroup when it is first seen, every period while it is
growing toward its limit or above 80% of it or its usage moved by more than 2% of
its limit since its last row, and every ``quiet_every`` periods otherwise: the table
has the second-by-second detail where `pxo explain` and the warnings need it, without
a row per cgroup per second forever (a flat line between two rows is a flat line).
docs/explain.md describes the estimator and what it is tested against.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pxo.common.schema import TIME, Column, Table
from pxo.common.timeutil import from_unix_seconds
from pxo.edge.cgroups import Hierarchy
from pxo.edge.sources.base import SamplingSource, SourceContext
from pxo.edge.sources.cgroupfs import (
    SmallFileReader,
    _int,
    _v1_limit,
    _v2_limit,
    check_readable,
    flat_keyed,
    parse_psi,
    resolve_memory_hierarchy,
    walk_cgroups,
)

log = logging.getLogger(__name__)

OOM_RISK = Table(
    "oom_risk",
    "Per memory cgroup with a limit, sampled every second: what it holds that reclaim cannot free, how fast "
    "that grows, and the estimated seconds until the limit is reached (NULL when it is not growing).",
    (
        TIME,
        Column("cgroup_path", "VARCHAR", "Memory cgroup, as the kernel names it"),
        Column("cgroup_id", "UBIGINT", "Inode number of the cgroup directory"),
        Column("limit_bytes", "UBIGINT", "Its memory limit (v2 memory.max, v1 limit_in_bytes), bytes"),
        Column("usage_bytes", "UBIGINT", "Memory charged to it (v2 memory.current, v1 usage_in_bytes), bytes"),
        Column("anon_bytes", "UBIGINT", "Anonymous memory, bytes"),
        Column("file_bytes", "UBIGINT", "Page cache, tmpfs and shared memory included, bytes"),
        Column("shmem_bytes", "UBIGINT", "tmpfs and shared memory (part of file_bytes), bytes"),
        Column("nonreclaimable_bytes", "UBIGINT",
               "usage minus the page cache reclaim can drop (file pages that are not tmpfs/shm), bytes"),
        Column("growth_bytes_per_s", "DOUBLE",
               "Growth of nonreclaimable_bytes: the median slope between every pair of the last samples "
               "(Theil-Sen), bytes per second"),
        Column("eta_seconds", "DOUBLE",
               "Estimated seconds until nonreclaimable_bytes reaches the limit at that growth; NULL when it is "
               "not growing (less than min_growth, too few samples, or not rising over the window)"),
        Column("psi_some_avg10", "DOUBLE", "memory.pressure: % of the last 10 s some task stalled on memory"),
        Column("psi_full_avg10", "DOUBLE", "memory.pressure: % of the last 10 s all tasks stalled on memory"),
        Column("stall_us", "UBIGINT",
               "Microseconds some task of the cgroup stalled on memory (reclaim, swap-in) since the previous "
               "sample (growth of memory.pressure some total)"),
        Column("samples", "INTEGER", "Samples the growth rests on"),
    ),
)


def theil_sen(points: list[tuple[float, float]]) -> float:
    """The median of the slopes between every pair of points (t, value); 0.0 for fewer than two."""
    slopes = sorted((v2 - v1) / (t2 - t1) for i, (t1, v1) in enumerate(points) for t2, v2 in points[i + 1:]
                    if t2 > t1)
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2


def without_largest_step(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points with their largest rise between two neighbours taken out (every later value lowered
    by it). One step (a cache loaded at start, a buffer grown once) is not a trend: while the window
    holds points from both sides of it, half the pairwise slopes cross it and the median follows them;
    without it, a flat cgroup is flat again. A real leak, a steady climb or a staircase of many steps,
    loses one interval's growth in twenty."""
    if len(points) < 3:
        return points
    rises = [(b[1] - a[1], i + 1) for i, (a, b) in enumerate(itertools.pairwise(points))]
    step, at = max(rises)
    if step <= 0:
        return points
    return [*points[:at], *((t, v - step) for t, v in points[at:])]


def noise_band(points: list[tuple[float, float]], growth: float) -> float:
    """How far the values wander around the line of slope ``growth``: the 10th to 90th
    percentile of what is left once the line is taken out. A climb over the window that is
    not well above it is a level that comes and goes (a process starting and ending beside
    a page-cache churn: seen as a square wave of 3 MiB under a 64 MiB limit), not a leak."""
    t0 = points[0][0]
    left = sorted(v - growth * (t - t0) for t, v in points)
    k = len(left) // 10
    return left[-1 - k] - left[k]


@dataclass
class Estimate:
    growth: float  # bytes per second
    eta: float | None  # seconds; None: not growing
    samples: int


@dataclass
class GrowthEstimator:
    """The growth of one cgroup's non-reclaimable memory, and the time to its limit."""

    window: int = 20
    min_samples: int = 5
    min_growth: float = 64 * 1024  # bytes/s: slower than this is noise, or a leak of days
    noise_ratio: float = 2.0  # the climb over the window must be this many times the band the values wander in
    points: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, t: float, value: float, limit: float) -> Estimate:
        self.points.append((t, value))
        while len(self.points) > self.window:
            self.points.popleft()
        pts = list(self.points)
        growth = min(theil_sen(pts), theil_sen(without_largest_step(pts)))
        rising = len(pts) >= 2 and pts[-1][1] > pts[0][1]
        if len(pts) < self.min_samples or growth < self.min_growth or not rising \
                or growth * (pts[-1][0] - pts[0][0]) < self.noise_ratio * noise_band(pts, growth):
            return Estimate(growth, None, len(pts))
        return Estimate(growth, max(0.0, (limit - value) / growth), len(pts))


@dataclass
class _Tracked:
    path: str
    directory: str
    cgroup_id: int
    limit: int
    estimator: GrowthEstimator
    last_psi_total: int | None = None
    quiet: int = 1 << 30  # periods since its last row: the first sample is always written
    written: int = -1  # usage in its last row


class OomRiskSource(SamplingSource):
    """oom_risk rows for every memory cgroup with a limit."""

    name = "risk"
    tables = (OOM_RISK,)

    def __init__(self, ctx: SourceContext, *, hierarchy: Hierarchy | None = None, period: float = 1.0,
                 discover_every: int = 3, quiet_every: int = 5, window: int = 20, max_cgroups: int = 5000,
                 high_ratio: float = 0.8, move_ratio: float = 0.02) -> None:
        super().__init__(ctx, period=period)
        self.hierarchy = hierarchy
        self.discover_every = discover_every
        self.quiet_every = quiet_every
        self.window = window
        self.max_cgroups = max_cgroups
        self.high_ratio = high_ratio
        self.move_ratio = move_ratio
        self._io = SmallFileReader()
        self._tracked: dict[str, _Tracked] = {}
        self._periods = 0
        self.latest: dict[str, dict[str, Any]] = {}  # cgroup path -> its last row (the edge's metrics)

    def open(self) -> None:
        self.hierarchy = self.hierarchy or resolve_memory_hierarchy(self.ctx.mountinfo)
        check_readable(self.hierarchy)

    def sample(self, now: float) -> int:
        assert self.hierarchy is not None, "sample() before open()"
        if self._periods % self.discover_every == 0:
            self._discover()
        self._periods += 1
        stamp = from_unix_seconds(now)
        rows = 0
        for path, tr in list(self._tracked.items()):
            row = self._read(tr, now)
            if row is None:  # removed
                del self._tracked[path]
                self.latest.pop(path, None)
                continue
            self.latest[path] = row
            usage = row["usage_bytes"]
            busy = (row["eta_seconds"] is not None or usage >= self.high_ratio * tr.limit
                    or abs(usage - tr.written) > self.move_ratio * tr.limit)
            tr.quiet += 1
            if busy or tr.quiet >= self.quiet_every:
                tr.quiet, tr.written = 0, usage
                row["time"] = stamp
                self.emit(OOM_RISK.name, row)
                rows += 1
        self.status.detail = f"{len(self._tracked)} cgroups with a limit"
        return rows

    # -- which cgroups have a limit ---------------------------------------------------

    def _discover(self) -> None:
        assert self.hierarchy is not None
        v2 = self.hierarchy.version == 2
        seen = set()
        for path, directory, cgroup_id in walk_cgroups(self.hierarchy, self.max_cgroups)[0]:
            if path == "/":
                continue
            limit = self._limit(directory, v2)
            if limit is None:
                continue
            seen.add(path)
            tr = self._tracked.get(path)
            if tr is None or tr.cgroup_id != cgroup_id:
                self._tracked[path] = _Tracked(path, directory, cgroup_id, limit, GrowthEstimator(self.window))
            else:
                tr.limit = limit  # limits change (kubectl set resources, in-place resize)
        for path in set(self._tracked) - seen:
            del self._tracked[path]
            self.latest.pop(path, None)

    def _limit(self, directory: str, v2: bool) -> int | None:
        try:
            data = self._io.read(os.path.join(directory, "memory.max" if v2 else "memory.limit_in_bytes"))
        except OSError:
            return None
        return _v2_limit(data) if v2 else _v1_limit(data)

    # -- one cgroup ---------------------------------------------------------------------

    def _read(self, tr: _Tracked, now: float) -> dict[str, Any] | None:
        v2 = self.hierarchy is not None and self.hierarchy.version == 2
        try:
            dfd = os.open(tr.directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            usage = _int(self._io.read("memory.current" if v2 else "memory.usage_in_bytes", dfd))
            stat = flat_keyed(self._io.read("memory.stat", dfd))
            try:
                psi = parse_psi(self._io.read("memory.pressure", dfd))
            except OSError:
                psi = {}
        except OSError as exc:
            # a cgroup being removed loses its files before its directory: ENOENT, or ENODEV
            # when one goes between its open and its read (that once stopped this source)
            if exc.errno in (errno.ENOENT, errno.ENODEV):
                return None
            raise
        finally:
            os.close(dfd)
        if usage is None:
            return None
        prefix = b"" if v2 else b"total_"
        anon = _int(stat.get(prefix + (b"anon" if v2 else b"rss"))) or 0
        file = _int(stat.get(prefix + (b"file" if v2 else b"cache"))) or 0
        shmem = _int(stat.get(prefix + b"shmem")) or 0
        nonreclaimable = max(0, usage - max(0, file - shmem))
        est = tr.estimator.add(now, nonreclaimable, tr.limit)
        total = psi.get("psi_some_total_us")
        stall = None if total is None or tr.last_psi_total is None else max(0, total - tr.last_psi_total)
        tr.last_psi_total = total
        return {
            "cgroup_path": tr.path, "cgroup_id": tr.cgroup_id, "limit_bytes": tr.limit, "usage_bytes": usage,
            "anon_bytes": anon, "file_bytes": file, "shmem_bytes": shmem, "nonreclaimable_bytes": nonreclaimable,
            "growth_bytes_per_s": est.growth, "eta_seconds": est.eta,
            "psi_some_avg10": psi.get("psi_some_avg10"), "psi_full_avg10": psi.get("psi_full_avg10"),
            "stall_us": stall, "samples": est.samples,
        }
