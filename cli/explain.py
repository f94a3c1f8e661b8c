"""`pxo explain`: an explanation (the cloud's JSON, docs/explain.md) as text for a terminal.

The kill, the verdict, the minutes before as Unicode sparklines that fit the terminal's
width (one character per slice of the window, the slice's highest value; blank where
nothing was sampled), who held the memory, and what was missing. Colour only on a TTY.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import textwrap
from collections.abc import Sequence
from typing import Any

from pxo.cli.errors import CliError
from pxo.cli.output import human_bytes, paint, table

BARS = "▁▂▃▄▅▆▇█"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def parse_window(text: str) -> int:
    """'10m', '90s', '1h' or a number of seconds, as whole seconds (10 s .. 24 h)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise CliError(f"--window {text!r}: give a duration such as 90s, 10m or 1h")
    seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if not 10 <= seconds <= 24 * 3600:
        raise CliError(f"--window {text}: between 10s and 24h")
    return int(seconds)


def _time(iso: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(iso.rstrip("Z")) if iso else None


def sparkline(points: Sequence[Sequence[Any]], start: dt.datetime, end: dt.datetime, width: int,
              top: float | None = None) -> str:
    """One character per slice of [start, end]: the slice's highest value on a scale from 0 to ``top``
    (default: the highest value); a blank where the slice has no sample."""
    span = max((end - start).total_seconds(), 1e-6)
    slots: list[float | None] = [None] * width
    for t_iso, v in points:
        t = _time(t_iso)
        if t is None or v is None:
            continue
        i = min(width - 1, max(0, int((t - start).total_seconds() / span * width)))
        slots[i] = v if slots[i] is None else max(slots[i] or 0.0, v)
    values = [v for v in slots if v is not None]
    scale = top if top else max(values, default=0.0)
    if not values:
        return " " * width
    out = []
    for v in slots:
        if v is None:
            out.append(" ")
        elif scale <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, max(0, int(v / scale * (len(BARS) - 1) + 0.5)))])
    return "".join(out)


def _fmt(unit: str, v: float | None) -> str:
    if v is None:
        return "-"
    if unit == "bytes":
        return human_bytes(v)
    if unit == "bytes_per_s":
        return human_bytes(v) + "/s"
    if unit == "percent":
        return f"{v:.1f}%"
    if unit == "us":
        return f"{v / 1000:.0f} ms"
    return f"{v:g}"


def _who(kill: dict[str, Any], kind: str) -> str:
    if kind == "user_kill":
        return (f"user space: SIGKILL from {kill.get('sender_comm')} (pid {kill.get('sender_pid')}, "
                f"{kill.get('sender_cgroup_path') or 'cgroup unknown'})")
    c = kill.get("constraint")
    limit = kill.get("memcg_limit_bytes")
    state = ", ".join(f"{k} {human_bytes(kill[f'memcg_{k}_bytes'])}" for k in ("usage", "peak", "swap")
                      if kill.get(f"memcg_{k}_bytes") is not None)
    if c == "memcg":
        return (f"the kernel, memory cgroup OOM: {kill.get('oom_memcg_path') or '?'} hit its "
                f"{human_bytes(limit) if limit else '?'} limit" + (f" ({state})" if state else ""))
    if c in ("global", "cpuset", "mempolicy"):
        return {"global": "the kernel, node-wide OOM (the node ran out of memory)",
                "cpuset": "the kernel, cpuset OOM", "mempolicy": "the kernel, memory-policy OOM"}[c]
    return "the kernel's OOM killer (why unknown: no report and no eBPF)"


def render(body: dict[str, Any], *, colour: bool = False, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((100, 24)).columns
    k, kind = body["kill"], body["kind"]
    victim = f"{k.get('comm') or k.get('target_comm') or '?'} (pid {k.get('pid') or k.get('target_pid')}"
    if k.get("ns_pid"):
        victim += ", the container's main process" if k["ns_pid"] == 1 else f", pid {k['ns_pid']} in its container"
    victim += ")"
    title = "OOM kill" if kind == "oom" else "Kill from user space (not an OOM kill)"
    lines = [paint(f"{title} on node {body['node']} at {(k.get('time') or '?')[:19].replace('T', ' ')}Z", "bold",
                   colour)]
    pod = "/".join(x for x in (k.get("namespace"), k.get("pod"), k.get("container")) if x)
    facts = [("victim", victim), ("cgroup", k.get("cgroup_path") or "-"), ("pod", pod or "-"),
             ("killed by", _who(k, kind))]
    if kind == "oom":
        facts.append(("trigger", f"{k.get('trigger_comm') or '?'} (pid {k.get('trigger_pid')})"))
        mem = ", ".join(f"{name} {human_bytes(k[col])}" for name, col in (
            ("anon", "anon_rss_bytes"), ("file", "file_rss_bytes"), ("shmem", "shmem_rss_bytes"),
            ("swap", "swap_bytes")) if k.get(col) is not None)
        facts.append(("its memory", mem or "-"))
    if body["members"]:
        facts.append(("group kill", ", ".join(f"{m.get('comm')} (pid {m.get('pid')})" for m in body["members"])))
    for name, value in facts:
        lines += textwrap.wrap(f"{name:<10} {value}", width - 2, initial_indent="  ", subsequent_indent=" " * 13,
                               break_on_hyphens=False) or [""]

    lines += ["", paint("Why", "bold", colour)]
    for v in body["verdicts"]:
        lines += textwrap.wrap(v["sentence"], width - 2, initial_indent="  ", subsequent_indent="  ",
                               break_on_hyphens=False)

    start, end = _time(body["window"]["start"]), _time(body["window"]["end"])
    if body["series"] and start and end:
        lines += ["", paint(f"The {_span(end - start)} before (to the kill at the right edge)", "bold", colour)]
        limit = next((max((v for _, v in s["points"] if v is not None), default=None)
                      for s in body["series"] if s["name"] == "limit"), None)
        names = [s["name"] for s in body["series"] if s["name"] != "limit"]
        label_w, value_w = min(28, max(len(n) for n in names) + 1) if names else 15, 22
        spark_w = max(10, width - label_w - value_w - 4)
        for s in body["series"]:
            if s["name"] == "limit":
                continue
            top = limit if s["unit"] == "bytes" and limit else (100.0 if s["unit"] == "percent" else None)
            values = [v for _, v in s["points"] if v is not None]
            last = values[-1] if values else None
            note = _fmt(s["unit"], last) + (f" of {human_bytes(limit)}" if top == limit and limit else "")
            label = s["name"] if len(s["name"]) < label_w else s["name"][:label_w - 2] + "…"
            lines.append(f"  {label:<{label_w}}{sparkline(s['points'], start, end, spark_w, top)}  {note}")

    if body["holders"]:
        src = body["holders"][0].get("source", "")
        lines += ["", paint("Who held the memory" + (f" ({src})" if src else ""), "bold", colour)]
        rows = [[h.get("comm"), h.get("pid"), h.get("rss_bytes"), "yes" if h.get("victim") else ""]
                for h in body["holders"]]
        lines += ["  " + line for line in table(["comm", "pid", "rss_bytes", "victim"], rows, width=width - 2,
                                                 colour=colour).splitlines()]
    if body["missing"]:
        lines += ["", paint("Not recorded", "bold", colour)]
        for m in body["missing"]:
            lines += textwrap.wrap(m, width - 2, initial_indent="  - ", subsequent_indent="    ",
                                   break_on_hyphens=False)
    if body.get("unanswered"):
        lines += ["", paint("Not asked or no answer (a newer kill may be there)", "bold", colour)]
        for u in body["unanswered"]:
            lines += textwrap.wrap(f"{u['node']}: {u['state']}: {u['detail']}", width - 2, initial_indent="  - ",
                                   subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


def _span(d: dt.timedelta) -> str:
    s = d.total_seconds()
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
