"""Why it died, in one or two sentences, from documented rules (docs/explain.md).

Each rule looks at what the edge recorded around one kill (``Evidence``) and either
does not apply (None) or gives a ``Verdict``: a rule name, a sentence with the
numbers it rests on, and those numbers. The rules are tried in order; the first two
that apply are the verdict (structure first: not an OOM, a group, the node, a
neighbour; then the cause: tmpfs or page cache, a leak, a spike, a limit below
the working set). When none applies the verdict says so: pxo never guesses.

Pure: no I/O. edge/explain.py gathers the evidence from the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class Point:
    """One sample of the victim's memory cgroup (oom_risk every second, else container_memory)."""

    time: dt.datetime
    usage: int
    limit: int | None
    anon: int | None
    file: int | None
    shmem: int | None

    @property
    def working_set(self) -> int:
        """What reclaim cannot drop: usage minus page cache that is not tmpfs/shm."""
        return max(0, self.usage - max(0, (self.file or 0) - (self.shmem or 0)))


@dataclass
class Evidence:
    kill: dict[str, Any]  # the oom_events row, or for a user kill the process_exits/kill_events facts
    kind: str  # "oom" | "user_kill"
    members: list[dict[str, Any]] = field(default_factory=list)  # the rest of a group kill
    series: list[Point] = field(default_factory=list)  # the victim's memory cgroup, oldest first
    window: dt.timedelta = dt.timedelta(minutes=10)
    allocators: list[tuple[str, int, int]] = field(default_factory=list)  # (comm, pid, bytes) last seconds
    siblings: list[tuple[str, int]] = field(default_factory=list)  # (cgroup path, usage) under the OOMing one
    consumers: list[tuple[str, int, int]] = field(default_factory=list)  # (comm, pid, rss) of the node/cgroup
    sender: dict[str, Any] | None = None  # the kill_events row of a user kill


@dataclass(frozen=True)
class Verdict:
    rule: str
    sentence: str
    numbers: dict[str, float]


def size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.0f}"


def span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _limit(e: Evidence) -> int | None:
    k = e.kill
    return k.get("memcg_limit_bytes") or next((p.limit for p in reversed(e.series) if p.limit), None)


# -- structure --------------------------------------------------------------------------

# A SIGKILL's sender, by its command name, and what it means.
SENDERS = {"kubelet": "the kubelet evicted it (node memory pressure)",
           "systemd-oomd": "systemd-oomd killed it (memory pressure)", "oomd": "oomd killed it (memory pressure)",
           "earlyoom": "earlyoom killed it (low memory)", "runc": "its container runtime stopped it",
           "conmon": "its container runtime stopped it", "containerd-shim": "its container runtime stopped it",
           "crun": "its container runtime stopped it", "podman": "its container runtime stopped it",
           "docker": "its container runtime stopped it", "dockerd": "its container runtime stopped it"}


def not_an_oom(e: Evidence) -> Verdict | None:
    if e.kind != "user_kill" or e.sender is None:
        return None
    s = e.sender
    who = SENDERS.get(str(s.get("sender_comm") or ""), "a process sent it SIGKILL")
    return Verdict("not_oom", f"Not an OOM kill: {who} ({s.get('sender_comm')}, pid {s.get('sender_pid')}, in "
                   f"{s.get('sender_cgroup_path') or 'an unknown cgroup'}).", {"sender_pid": s.get("sender_pid") or 0})


def group_kill(e: Evidence) -> Verdict | None:
    group = e.kill.get("oom_group_path")
    if e.kind != "oom" or not group:
        return None
    n = 1 + len(e.members)
    return Verdict("group_kill", f"memory.oom.group is set on {group}: the kernel killed all {n} of its tasks "
                   "together, not only the one it chose.", {"tasks": n})


def node_oom(e: Evidence) -> Verdict | None:
    if e.kind != "oom" or e.kill.get("constraint") not in ("global", "cpuset", "mempolicy"):
        return None
    top = ", ".join(f"{comm} (pid {pid}, {size(rss)})" for comm, pid, rss in e.consumers[:3]) or "not recorded"
    what = {"global": "The node ran out of memory", "cpuset": "The cpuset's memory nodes ran out",
            "mempolicy": "The memory policy's nodes ran out"}[e.kill["constraint"]]
    return Verdict("node_oom", f"{what}, not a cgroup's limit: the largest consumers were {top}.",
                   {"consumers": len(e.consumers)})


def neighbour(e: Evidence) -> Verdict | None:
    k = e.kill
    own, hit = k.get("cgroup_path"), k.get("oom_memcg_path")
    if e.kind != "oom" or k.get("constraint") != "memcg" or not own or not hit or hit == own:
        return None
    others = [(p, u) for p, u in e.siblings if not (own == p or own.startswith(p.rstrip("/") + "/"))]
    limit = _limit(e)
    if not others:
        return Verdict("neighbour", f"The limit hit was {hit}'s ({size(limit)}), which {own} shares with the rest "
                       f"of {hit}.", {"limit_bytes": limit or 0})
    path, usage = max(others, key=lambda x: x[1])
    return Verdict("neighbour", f"The limit hit was {hit}'s ({size(limit)}), shared: its other cgroup {path} held "
                   f"{size(usage)} of it.", {"limit_bytes": limit or 0, "neighbour_bytes": usage})


# -- the cause -------------------------------------------------------------------------------


def _fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(slope, r^2) of a least-squares line."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    stt = sum((t - mt) ** 2 for t, _ in points)
    svv = sum((v - mv) ** 2 for _, v in points)
    if stt == 0 or svv == 0:
        return 0.0, 0.0
    stv = sum((t - mt) * (v - mv) for t, v in points)
    return stv / stt, stv * stv / (stt * svv)


def steady_leak(e: Evidence) -> Verdict | None:
    limit = _limit(e)
    pts = [p for p in e.series if p.anon is not None]
    if e.kind != "oom" or not limit or len(pts) < 6:
        return None
    t0 = pts[0].time
    xy = [((p.time - t0).total_seconds(), float(p.anon or 0)) for p in pts]
    duration = xy[-1][0] - xy[0][0]
    slope, r2 = _fit(xy)
    grew = xy[-1][1] - xy[0][1]
    if duration < 10 or slope <= 0 or r2 < 0.9 or xy[-1][1] < 0.7 * limit or grew < 0.3 * limit:
        return None
    return Verdict("steady_leak", f"A steady leak: anonymous memory grew at {size(slope)}/s for {span(duration)} "
                   f"({size(xy[0][1])} to {size(xy[-1][1])}) until the {size(limit)} limit.",
                   {"bytes_per_s": slope, "seconds": duration, "r2": r2, "limit_bytes": limit})


def spike(e: Evidence, *, within: float = 10.0, flat_for: float = 5.0) -> Verdict | None:
    """Flat and low (anon at most half the limit, moving less than a tenth of it) for at least
    ``flat_for`` seconds of samples, and still low ``within`` seconds or less before the kill.

    The samples after the flat part, if any, must all be above it: a sample that lands while the
    large allocation is being made (its pages are touched one by one, slower still under reclaim)
    is the climb, not the end of the flat part."""
    limit = _limit(e)
    kill_time = e.kill.get("time")
    pts = [p for p in e.series if p.anon is not None and (kill_time is None or p.time <= kill_time)]
    if e.kind != "oom" or not limit or not pts or kill_time is None:
        return None
    anon = [p.anon or 0 for p in pts]
    for last in reversed(range(len(pts))):  # the flat part's last sample: the latest one that fits
        levels = anon[:last + 1]
        gap = (kill_time - pts[last].time).total_seconds()
        if gap > within:
            return None  # earlier samples are further still from the kill
        if max(levels) > 0.5 * limit or max(levels) - min(levels) > 0.1 * limit:
            continue
        if any(a <= max(levels) for a in anon[last + 1:]):
            return None  # what follows the flat part is not a climb
        flat_s = (pts[last].time - pts[0].time).total_seconds()
        if flat_s < flat_for:
            return None
        top = max(e.allocators, key=lambda a: a[2]) if e.allocators else None
        by = f"; {top[0]} (pid {top[1]}) allocated {size(top[2])} in its last seconds" if top else ""
        return Verdict("spike", f"A sudden spike: anonymous memory was flat at about {size(levels[-1])} for "
                       f"{span(flat_s)} and still there {span(gap)} before the kill, then it reached the "
                       f"{size(limit)} limit{by}.", {"before_bytes": levels[-1], "limit_bytes": limit, "seconds": gap})
    return None


def cache_or_shm(e: Evidence) -> Verdict | None:
    limit = _limit(e)
    if e.kind != "oom" or not limit or not e.series:
        return None
    last = e.series[-1]
    shmem = last.shmem or 0
    cache = max(0, (last.file or 0) - shmem)
    if shmem >= 0.3 * limit:
        return Verdict("tmpfs_shm", f"tmpfs or shared memory held {size(shmem)} of the {size(limit)} limit: it is "
                       "charged to the cgroup and only swap can free it, so files written to a memory-backed "
                       "volume (emptyDir medium Memory, /dev/shm) count as the container's memory.",
                       {"shmem_bytes": shmem, "limit_bytes": limit})
    if cache >= 0.5 * limit:
        return Verdict("page_cache", f"Page cache held {size(cache)} of the {size(limit)} limit at the kill: pages "
                       "reclaim could not drop fast enough (dirty, under writeback, or in use).",
                       {"page_cache_bytes": cache, "limit_bytes": limit})
    return None


def limit_too_low(e: Evidence, *, share: float = 0.8, level: float = 0.85) -> Verdict | None:
    """Long means at least half the window asked for (5 of the default 10 minutes)."""
    limit = _limit(e)
    if e.kind != "oom" or not limit or len(e.series) < 3:
        return None
    least = e.window / 2
    covered = e.series[-1].time - e.series[0].time
    high = [p for p in e.series if p.working_set >= level * limit]
    if covered < least or len(high) < share * len(e.series):
        return None
    return Verdict("limit_too_low", f"The limit is below what it needs: its working set was within "
                   f"{1 - level:.0%} of the {size(limit)} limit for {span(covered.total_seconds())} "
                   f"({len(high)} of {len(e.series)} samples) before the kill.",
                   {"limit_bytes": limit, "seconds": covered.total_seconds(), "share": len(high) / len(e.series)})


RULES: tuple[Callable[[Evidence], Verdict | None], ...] = (
    not_an_oom, group_kill, node_oom, neighbour, cache_or_shm, steady_leak, spike, limit_too_low)


def verdicts(e: Evidence, *, most: int = 2) -> list[Verdict]:
    """The first ``most`` rules that apply, or the one that says none does."""
    found = [v for rule in RULES if (v := rule(e)) is not None][:most]
    return found or [Verdict("none", "No rule fits these figures; pxo does not guess (the series and the "
                             "holders below are what was recorded).", {})]
