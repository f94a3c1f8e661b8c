"""`pxo explain` on the node where the kill happened: find the kill, gather what the
edge recorded around it from its own store, and say why (edge/verdicts.py).

The collector asks every edge to *resolve* a target first (which node has the most
recent kill that matches: ``find``), then asks that one edge for the explanation
(``explain``). Everything comes from the store: oom_events (the kill and its group),
kill_events (a kill from user space), oom_risk (the victim's memory cgroup every
second) or container_memory (every 10 s), alloc_rate, reclaim_stalls, oom_candidates,
process_memory and probe_status (what was not running).

Targets: an oom_id, a pid, a cgroup path, a container id (12 hex digits or more), or
namespace/pod[/container]; empty: the most recent kill.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2

from pxo.common.timeutil import iso, to_unix_us
from pxo.edge.store import Store
from pxo.edge.verdicts import Evidence, Point, Verdict, verdicts
from pxo.v1 import pxo_pb2

_HEX = re.compile(r"^[0-9a-f]{12,64}$")
_OOM_ID = re.compile(r"^[0-9a-f-]{36}:(bpf-)?\d+$")
DEFAULT_WINDOW_S = 600
CLIMB = dt.timedelta(seconds=2)  # after the kill: rows stamped by a sampler just after still count


@dataclass
class Found:
    """The kill a target names, on this node."""

    time: dt.datetime
    kind: str  # oom | user_kill
    row: dict[str, Any]


@dataclass
class Series:
    name: str
    unit: str  # bytes | percent | bytes_per_s | us
    times: list[dt.datetime] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)


@dataclass
class Explanation:
    found: Found
    members: list[dict[str, Any]]
    series: list[Series]
    holders: list[dict[str, Any]]  # (comm, pid, rss_bytes, source, victim)
    verdicts: list[Verdict]
    missing: list[str]
    window_start: dt.datetime
    window_end: dt.datetime


def _where(target: str) -> tuple[str, dict[str, Any]] | None:
    """The oom_events condition a target means (None: any kill)."""
    t = target.strip()
    if not t:
        return None
    if _OOM_ID.match(t):
        return "oom_id = $t", {"t": t}
    if t.isdigit():
        return "(pid = $n OR tid = $n)", {"n": int(t)}
    if t.startswith("/"):
        return "(cgroup_path = $t OR cgroup_v2_path = $t OR oom_memcg_path = $t)", {"t": t}
    if _HEX.match(t):
        return "starts_with(container_id, $t)", {"t": t}
    parts = t.split("/")
    if len(parts) in (2, 3) and all(parts):
        cond = "namespace = $ns AND pod = $pod" + (" AND container = $c" if len(parts) == 3 else "")
        return cond, {"ns": parts[0], "pod": parts[1], **({"c": parts[2]} if len(parts) == 3 else {})}
    raise ValueError(f"{target!r} is no target pxo knows: an oom_id, a pid, a cgroup path (/...), a container "
                     "id (12+ hex digits) or namespace/pod[/container]")


def find(store: Store, target: str, *, at: dt.datetime | None = None, kind: str | None = None) -> Found | None:
    """The most recent kill on this node that the target names: an OOM kill (the chosen victim
    of its invocation first), or, for a pid, a container or a pod, a SIGKILL from user space.
    With ``at`` (and ``kind``): the one of that time, as an earlier find() returned it."""
    where = _where(target)
    cond, params = where if where is not None else ("TRUE", {})
    if at is not None:
        cond, params = f'({cond}) AND "time" = $at', {**params, "at": at}
    oom = [] if kind == "user_kill" else store.rows(
        f'SELECT * FROM oom_events WHERE {cond} ORDER BY "time" DESC, chosen DESC LIMIT 1', params)
    user: list[dict[str, Any]] = []
    if where is not None and not _OOM_ID.match(target.strip()) and kind != "oom":
        kcond = (cond.replace("(pid = $n OR tid = $n)", "(target_pid = $n OR target_tid = $n)")
                 .replace("oom_memcg_path = $t", "FALSE"))
        user = store.rows(f'SELECT * FROM kill_events WHERE {kcond} ORDER BY "time" DESC LIMIT 1', params)
    best = max([*(("oom", r) for r in oom), *(("user_kill", r) for r in user)], key=lambda kr: kr[1]["time"],
               default=None)
    return Found(best[1]["time"], best[0], best[1]) if best else None


def explain(store: Store, found: Found, *, window: dt.timedelta = dt.timedelta(minutes=10)) -> Explanation:
    k = found.row
    t, start = found.time, found.time - window
    missing: list[str] = []
    members: list[dict[str, Any]] = []
    if found.kind == "oom" and k.get("oom_id"):
        members = store.rows('SELECT * FROM oom_events WHERE oom_id = $id AND tid IS DISTINCT FROM $tid '
                             'ORDER BY "time"', {"id": k["oom_id"], "tid": k.get("tid")})
    victim_cg = k.get("cgroup_path")
    series_cg = (k.get("oom_memcg_path") if k.get("constraint") == "memcg" else None) or victim_cg
    points, series = _series(store, series_cg, start, t, missing) if series_cg else ([], [])
    if not series_cg:
        missing.append("the victim's memory cgroup is unknown (no eBPF, and the kernel did not log it)")
    if found.kind == "oom" and k.get("report_logged") is False:
        missing.append("the kernel rate-limited its report of this kill: no candidate table (the why comes "
                       "from eBPF's reading of the cgroups)")
    allocators = [(r["comm"] or "?", r["pid"], int(r["b"])) for r in store.rows(
        'SELECT comm, pid, sum(alloc_bytes) AS b FROM alloc_rate WHERE cgroup_path = $cg AND "time" BETWEEN $lo '
        'AND $hi GROUP BY comm, pid ORDER BY b DESC LIMIT 5',
        {"cg": victim_cg, "lo": t - dt.timedelta(seconds=15), "hi": t + CLIMB})] if victim_cg else []
    series += _alloc_series(store, victim_cg, start, t) if victim_cg else []
    stalls = _stall_series(store, victim_cg, start, t) if victim_cg else None
    if stalls is not None:
        series.append(stalls)
    holders = _holders(store, k, found.kind, t)
    siblings: list[tuple[str, int]] = []
    hit = k.get("oom_memcg_path")
    if found.kind == "oom" and hit and hit != victim_cg:
        siblings = [(r["cgroup_path"], int(r["usage_bytes"] or 0)) for r in store.rows(
            'SELECT cgroup_path, arg_max(usage_bytes, "time") AS usage_bytes FROM container_memory '
            'WHERE starts_with(cgroup_path, $p) AND "time" BETWEEN $lo AND $hi GROUP BY cgroup_path',
            {"p": hit.rstrip("/") + "/", "lo": t - dt.timedelta(seconds=60), "hi": t + CLIMB})]
    consumers = [(h["comm"], h["pid"], h["rss_bytes"]) for h in holders if not h["victim"]]
    sender = k if found.kind == "user_kill" else None
    ev = Evidence(kill=k, kind=found.kind, members=members, series=points, window=window, allocators=allocators,
                  siblings=siblings, consumers=consumers, sender=sender)
    missing += _not_running(store, start, t)
    return Explanation(found, members, series, holders, verdicts(ev), missing, start, t)


def _series(store: Store, cgroup: str, lo: dt.datetime, hi: dt.datetime,
            missing: list[str]) -> tuple[list[Point], list[Series]]:
    """The cgroup's memory in the window: oom_risk (every second) where it has rows, else container_memory."""
    params = {"cg": cgroup, "lo": lo, "hi": hi}
    rows = store.rows('SELECT "time", usage_bytes, limit_bytes, anon_bytes, file_bytes, shmem_bytes, '
                      'psi_some_avg10 FROM oom_risk WHERE cgroup_path = $cg AND "time" BETWEEN $lo AND $hi '
                      'ORDER BY "time"', params)
    source = "oom_risk"
    if len(rows) < 3:
        rows = store.rows('SELECT "time", usage_bytes, limit_bytes, anon_bytes, file_bytes, shmem_bytes, '
                          'psi_some_avg10 FROM container_memory WHERE cgroup_path = $cg AND "time" BETWEEN $lo '
                          'AND $hi ORDER BY "time"', params)
        source = "container_memory"
    if not rows:
        missing.append(f"no samples of {cgroup} in the window (the edge was not running, or the cgroup was "
                       "removed before it was sampled)")
        return [], []
    first = rows[0]["time"]
    if (first - lo).total_seconds() > 60:
        running = store.rows('SELECT min("time") AS t FROM probe_status WHERE "time" >= $lo', {"lo": lo})
        since = running[0]["t"] if running else None
        if since is None or (first - since).total_seconds() < 10:  # the edge itself started late
            missing.append(f"{cgroup} has samples only from {(first - lo).total_seconds():.0f} s into the window "
                           f"(from {source}): the edge was not running before")
    points = [Point(r["time"], int(r["usage_bytes"] or 0), r["limit_bytes"], r["anon_bytes"], r["file_bytes"],
                    r["shmem_bytes"]) for r in rows]
    times = [p.time for p in points]
    out = [Series(name, "bytes", times, [float(v) if v is not None else None for v in values]) for name, values in (
        ("usage", [p.usage for p in points]), ("limit", [p.limit for p in points]),
        ("anon", [p.anon for p in points]), ("page_cache", [max(0, (p.file or 0) - (p.shmem or 0)) for p in points]),
        ("shmem", [p.shmem for p in points]), ("working_set", [p.working_set for p in points]))]
    out.append(Series("psi_some_avg10", "percent", times, [r["psi_some_avg10"] for r in rows]))
    return points, out


def _alloc_series(store: Store, cgroup: str, lo: dt.datetime, hi: dt.datetime) -> list[Series]:
    """The cgroup's allocation rate, and that of its three biggest allocators in the window."""
    params = {"cg": cgroup, "lo": lo, "hi": hi + CLIMB}
    rows = store.rows('SELECT "time", sum(alloc_bytes) / max(interval_s) AS rate FROM alloc_rate '
                      'WHERE cgroup_path = $cg AND "time" BETWEEN $lo AND $hi GROUP BY "time" ORDER BY "time"', params)
    if not rows:
        return []
    out = [Series("alloc_rate", "bytes_per_s", [r["time"] for r in rows], [float(r["rate"]) for r in rows])]
    top = store.rows('SELECT pid, any_value(comm) AS comm FROM alloc_rate WHERE cgroup_path = $cg AND "time" '
                     'BETWEEN $lo AND $hi GROUP BY pid ORDER BY sum(alloc_bytes) DESC LIMIT 3', params)
    for t in top:
        per = store.rows('SELECT "time", sum(alloc_bytes) / max(interval_s) AS rate FROM alloc_rate WHERE '
                         'cgroup_path = $cg AND pid = $pid AND "time" BETWEEN $lo AND $hi GROUP BY "time" '
                         'ORDER BY "time"', {**params, "pid": t["pid"]})
        out.append(Series(f"alloc_rate {t['comm'] or '?'} ({t['pid']})", "bytes_per_s", [r["time"] for r in per],
                          [float(r["rate"]) for r in per]))
    return out


def _stall_series(store: Store, cgroup: str, lo: dt.datetime, hi: dt.datetime) -> Series | None:
    rows = store.rows('SELECT time_bucket(INTERVAL 10 SECOND, "time") AS t, sum(duration_ns) / 1000 AS us '
                      'FROM reclaim_stalls WHERE cgroup_path = $cg AND "time" BETWEEN $lo AND $hi '
                      'GROUP BY t ORDER BY t', {"cg": cgroup, "lo": lo, "hi": hi + CLIMB})
    if not rows:
        return None
    return Series("reclaim_stall", "us", [r["t"] for r in rows], [float(r["us"]) for r in rows])


def _holders(store: Store, k: dict[str, Any], kind: str, t: dt.datetime) -> list[dict[str, Any]]:
    """Who held the memory: the kernel's candidate table when it logged one, else the largest
    processes of the cgroup (of the node, for a node-wide OOM) sampled nearest before the kill."""
    if kind == "oom" and k.get("oom_id"):
        rows = store.rows('SELECT comm, tgid AS pid, rss_bytes, victim FROM oom_candidates WHERE oom_id = $id '
                          'ORDER BY rss_bytes DESC NULLS LAST LIMIT 10', {"id": k["oom_id"]})
        if rows:
            return [{**r, "source": "oom_candidates"} for r in rows]
    node_wide = k.get("constraint") in ("global", "cpuset", "mempolicy")
    cond = "TRUE" if node_wide else "cgroup_path = $cg"
    rows = store.rows(f'SELECT comm, pid, rss_bytes FROM process_memory WHERE {cond} AND "time" = ('
                      f'SELECT max("time") FROM process_memory WHERE {cond} AND "time" <= $t) '
                      'ORDER BY rss_bytes DESC LIMIT 10', {"cg": k.get("cgroup_path"), "t": t})
    victim = k.get("pid") or k.get("target_pid")
    return [{**r, "victim": r["pid"] == victim, "source": "process_memory"} for r in rows]


def _not_running(store: Store, lo: dt.datetime, hi: dt.datetime) -> list[str]:
    rows = store.rows('SELECT source, arg_max(state, "time") AS state, arg_max(detail, "time") AS detail '
                      'FROM probe_status WHERE "time" <= $hi AND "time" >= $lo - INTERVAL 1 MINUTE '
                      'GROUP BY source HAVING arg_max(state, "time") NOT IN (\'running\', \'stopped\') '
                      'ORDER BY source', {"lo": lo, "hi": hi})
    return [f"source {r['source']} was {r['state']}: {r['detail']}" for r in rows]


# -- on the wire ----------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    """A store value as JSON has it: times as ISO 8601 (UTC), big numbers as numbers."""
    if isinstance(v, dt.datetime):
        return iso(v)
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, uuid.UUID | bytes):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def row_struct(row: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update({k: _plain(v) for k, v in row.items()})
    return out


def to_proto(e: Explanation, node: str) -> pxo_pb2.Explanation:
    return pxo_pb2.Explanation(
        node=node, kind=e.found.kind, kill=row_struct(e.found.row), members=[row_struct(m) for m in e.members],
        series=[pxo_pb2.Series(name=s.name, unit=s.unit, time_unix_us=[to_unix_us(t) for t in s.times],
                               values=[math.nan if v is None else float(v) for v in s.values]) for s in e.series],
        holders=[row_struct(h) for h in e.holders],
        verdicts=[pxo_pb2.Verdict(rule=v.rule, sentence=v.sentence, numbers={k: float(x) for k, x in v.numbers.items()})
                  for v in e.verdicts],
        missing=e.missing, window_start_unix_us=to_unix_us(e.window_start),
        window_end_unix_us=to_unix_us(e.window_end))
