"""Early-warning benchmark (issue 14): how long before the kernel's OOM kill pxo warns, and
whether it warns about cgroups that are not going to be killed.

The real oom_risk source (edge/sources/risk.py) runs in this process and samples every
memory cgroup with a limit each second; this script starts workloads in memory-limited
cgroups beneath its own cgroup, all at once (side by side, one cgroup each), and reads the
rows the source emits as they are emitted. A warning is an oom_risk row whose eta_seconds
is below --threshold (60 s by default): the collector's --notify-url fires on the same
condition.

    grow R MiB/s   anonymous memory written at R MiB/s from nothing until the kernel kills
                   it (bounded: it stops by itself at twice the limit). Reported: the time it
                   took to climb its last 50% of the limit (usage sampled every 50 ms, to the
                   process's death by SIGKILL), the lead from the first warning to the kill
                   (goal: at least half that climb), the lead from the first estimate of any
                   size, and the smallest threshold that would have met the goal. The
                   cgroup's own oom_kill counter confirms the kernel killed it.
    flat           fills 85% of the limit at once, then holds 85-90% (a random 0-5% on top,
                   redrawn every 0.5 s) for --seconds. Goal: no warning.
    page cache     writes and re-reads a file three times the limit, in its cgroup, for
                   --seconds: the limit fills with page cache reclaim can drop. Goal: no
                   warning.

    .venv/bin/python bench/oom_warning.py                       # 1, 4, 16 MiB/s; 256 MiB; 60 s
    .venv/bin/python bench/oom_warning.py --quick               # 64 MiB limit, 20 s: about 1.5 min
    .venv/bin/python bench/oom_warning.py --rates 2,8 --threshold 90 --repeat 3 -o json

Root is needed (cgroups). The workloads are Python children that join their cgroup by
writing their pid to cgroup.procs before they allocate; the cgroups are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.risk import OOM_RISK, OomRiskSource

MiB = 1 << 20
SETTLE = 10.0  # s of calm that end a warning episode (collector/notify.py's default)
WINDOW = 20  # samples the growth rests on (OomRiskSource's default window): how long a step stays in it

# Every child: argv[1] is its cgroup's cgroup.procs, joined before anything is allocated.
_PRELUDE = """
import os, random, sys, time
MiB = 1 << 20
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
print("joined", flush=True)
"""

CHILDREN = {
    # R MiB/s of written anonymous memory, paced by the clock in 0.1 s steps, for at most `top` MiB
    "grow": """
import mmap
rate, top = float(sys.argv[2]), int(sys.argv[3]) * MiB
m = mmap.mmap(-1, top)
step = max(4096, int(rate * MiB * 0.1) // 4096 * 4096)
start, done = time.monotonic(), 0
while done < top:
    n = min(step, top - done)
    m[done:done + n] = b"\\x01" * n
    done += n
    time.sleep(max(0.0, start + done / (rate * MiB) - time.monotonic()))
""",
    # `base` MiB at once, then a random 0..`noise` MiB on top redrawn every 0.5 s, for `hold` s
    "flat": """
base, noise, hold = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
held = bytearray(b"\\x01") * (base * MiB)
print("plateau", flush=True)
end = time.monotonic() + hold
while time.monotonic() < end:
    extra = bytearray(b"\\x02") * random.randrange(noise * MiB)
    time.sleep(0.5)
    del extra
""",
    # write `size` MiB to `path`, read it back, again, for `seconds` s (the limit fills with page cache)
    "cache": """
path, size, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
chunk, end, passes = b"\\x03" * MiB, time.monotonic() + seconds, 0
try:
    while time.monotonic() < end:
        with open(path, "wb") as f:
            for _ in range(size):
                f.write(chunk)
        with open(path, "rb") as f:
            while f.read(MiB):
                pass
        passes += 1
finally:
    os.unlink(path)
print(f"passes {passes}", flush=True)
""",
}


class TimedSink:
    """Keeps the oom_risk rows the source emits, each with the wall time it was emitted at:
    the moment a warning on that row could have been sent."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def append(self, table: str, row: Any) -> None:
        if table == OOM_RISK.name:
            with self._lock:
                self.rows.append((time.time(), dict(row)))

    def of(self, cgroup_path: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(t, r) for t, r in self.rows if r["cgroup_path"] == cgroup_path]


@dataclass
class Workload:
    kind: str  # grow | flat | cache
    label: str
    cg: ScratchCgroup
    argv: list[str]
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    plateau: float | None = None  # flat: when its base was allocated
    died: float | None = None
    status: int | None = None
    half_at: float | None = None  # first time its usage reached half the limit
    peak: int = 0
    oom_kill: int = 0  # the cgroup's own counter, read before it is removed
    output: list[str] = field(default_factory=list)

    def start(self) -> None:
        code = textwrap.dedent(_PRELUDE) + textwrap.dedent(CHILDREN[self.kind])
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.cg.procs_file), *self.argv],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != "joined\n":
            raise SystemExit(f"{self.label}: the child did not join {self.cg.path} (exit {self.proc.wait()})")
        self.started = time.time()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line == "plateau\n":
                self.plateau = time.time()
            self.output.append(line.strip())
        self.status = self.proc.wait()
        self.died = time.time()


def usage_file(cg: ScratchCgroup) -> Path:
    return cg.dir / ("memory.usage_in_bytes" if cg.hierarchy.version == 1 else "memory.current")


def sample_usage(workloads: list[Workload], stop: threading.Event) -> None:
    """Every 50 ms: each cgroup's usage, for the time its workload reached half its limit."""
    while not stop.wait(0.05):
        now = time.time()
        for w in workloads:
            if w.died is not None:
                continue
            try:
                usage = int(usage_file(w.cg).read_text())
            except (OSError, ValueError):
                continue
            w.peak = max(w.peak, usage)
            if w.half_at is None and usage >= w.cg.limit_bytes / 2:
                w.half_at = now


def first_below(rows: list[tuple[float, dict[str, Any]]], threshold: float) -> float | None:
    return next((t for t, r in rows if r["eta_seconds"] is not None and r["eta_seconds"] < threshold), None)


def episodes(rows: list[tuple[float, dict[str, Any]]], threshold: float) -> int:
    """Warning episodes as the collector counts them: one starts at an estimate below the
    threshold and ends after SETTLE s of estimates that are NULL or above twice it."""
    count, active, calm_since = 0, False, None
    for t, r in rows:
        eta = r["eta_seconds"]
        if eta is not None and eta < threshold:
            count += 0 if active else 1
            active, calm_since = True, None
        elif active and (eta is None or eta > 2 * threshold):
            calm_since = calm_since or t
            if t - calm_since >= SETTLE:
                active = False
    return count


def grow_result(w: Workload, rows: list[tuple[float, dict[str, Any]]], threshold: float) -> dict[str, Any]:
    killed = w.status == -signal.SIGKILL
    out: dict[str, Any] = {"workload": w.label, "killed": killed, "exit": w.status, "oom_kill": w.oom_kill}
    if not killed or w.died is None or w.half_at is None:
        return out
    before = [(t, r) for t, r in rows if t < w.died]
    climb = w.died - w.half_at
    goal = climb / 2
    warned = first_below(before, threshold)
    estimated = first_below(before, float("inf"))
    # the smallest threshold that meets the goal: above the lowest estimate made at least `goal` s before the kill
    early = [r["eta_seconds"] for t, r in before if t <= w.died - goal and r["eta_seconds"] is not None]
    lead = None if warned is None else w.died - warned
    out.update({
        "climb_last_half_s": climb, "goal_lead_s": goal, "lead_s": lead,
        "met": lead is not None and lead >= goal,
        "lead_first_eta_s": None if estimated is None else w.died - estimated,
        "threshold_needed_s": min(early) if early else None,
        "rows": len(before),
    })
    return out


def calm_result(w: Workload, rows: list[tuple[float, dict[str, Any]]], threshold: float) -> dict[str, Any]:
    since = w.plateau if w.plateau is not None else w.started
    during = [(t, r) for t, r in rows if since <= t <= (w.died or time.time())]
    etas = [r["eta_seconds"] for _, r in during if r["eta_seconds"] is not None]
    warned = [t for t, r in during if r["eta_seconds"] is not None and r["eta_seconds"] < threshold]
    return {
        "workload": w.label, "exit": w.status, "oom_kill": w.oom_kill,
        "seconds": (w.died or time.time()) - since, "rows": len(during), "with_eta": len(etas),
        "min_eta_s": min(etas) if etas else None, "warnings": len(warned), "episodes": episodes(during, threshold),
        # a step up stays in the growth window for WINDOW samples: warnings then come from reaching the plateau
        "warnings_first_window": sum(1 for t in warned if t - since <= WINDOW + 1),
        "peak_mib": w.peak / MiB,
        "max_file_mib": max((r["file_bytes"] for _, r in during), default=0) / MiB,
        "output": " ".join(w.output),
    }


def one_round(rates: list[float], limit: int, seconds: float, threshold: float, scratch: Path) -> dict[str, Any]:
    sink = TimedSink()
    source = OomRiskSource(SourceContext(sink=sink))
    cgs: list[ScratchCgroup] = []
    workloads: list[Workload] = []
    stop = threading.Event()
    try:
        def cgroup() -> ScratchCgroup:
            cg = ScratchCgroup(limit, prefix="pxo-bench-warn")
            cgs.append(cg.__enter__())
            return cg

        top = 2 * limit // MiB  # bounded: a grower stops by itself at twice the limit
        for rate in rates:
            workloads.append(Workload("grow", f"grow {rate:g} MiB/s", cgroup(), [f"{rate:g}", str(top)]))
        base, noise = int(0.85 * limit) // MiB, max(1, int(0.05 * limit) // MiB)
        workloads.append(Workload("flat", "flat 85-90%", cgroup(), [str(base), str(noise), f"{seconds:g}"]))
        workloads.append(Workload("cache", "page cache", cgroup(),
                                  [str(scratch / f"churn-{os.getpid()}"), str(3 * limit // MiB), f"{seconds:g}"]))
        source.start()
        time.sleep(3.5)  # the source finds cgroups with a limit every 3 s: let it see them empty first
        sampler = threading.Thread(target=sample_usage, args=(workloads, stop), daemon=True)
        sampler.start()
        for w in workloads:
            w.start()
        slowest = max([limit / MiB * 2 / r for r in rates] + [seconds]) + 120
        end = time.monotonic() + slowest
        while any(w.died is None for w in workloads) and time.monotonic() < end:
            time.sleep(0.2)
        for w in workloads:
            if w.died is None and w.proc is not None:
                w.proc.kill()
        time.sleep(0.5)
        for w in workloads:
            w.oom_kill = w.cg.oom_kills()
    finally:
        stop.set()
        source.stop()
        for cg in cgs:
            cg.__exit__(None, None, None)
    grow = [grow_result(w, sink.of(w.cg.path), threshold) for w in workloads if w.kind == "grow"]
    calm = [calm_result(w, sink.of(w.cg.path), threshold) for w in workloads if w.kind != "grow"]
    return {"grow": grow, "calm": calm}


def _s(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def table(rounds: list[dict[str, Any]], threshold: float) -> str:
    lines = [f"Growing toward the limit (warning: eta < {threshold:g} s; goal: lead >= half the last-50% climb)",
             "",
             f"{'workload':<16} {'last 50%':>8} {'goal':>6} {'lead':>6} {'met':>4} {'1st eta':>7} "
             f"{'T needed':>8} {'oom_kill':>8}",
             f"{'':<16} {'s':>8} {'s':>6} {'s':>6} {'':>4} {'lead s':>7} {'s':>8} {'':>8}"]
    for rd in rounds:
        for g in rd["grow"]:
            if "climb_last_half_s" not in g:
                lines.append(f"{g['workload']:<16} not killed (exit {g['exit']}, oom_kill {g['oom_kill']})")
                continue
            need = g["threshold_needed_s"]
            lines.append(f"{g['workload']:<16} {g['climb_last_half_s']:>8.1f} {g['goal_lead_s']:>6.1f} "
                         f"{_s(g['lead_s']):>6} {'yes' if g['met'] else 'no':>4} {_s(g['lead_first_eta_s']):>7} "
                         f"{('> ' + _s(need, '.0f')) if need is not None else 'none':>8} {g['oom_kill']:>8}")
    lines += ["", "Not going to be killed (goal: no warning)", "",
              f"{'workload':<14} {'s':>5} {'rows':>5} {'eta':>4} {'min eta':>8} {'warn':>5} {'episodes':>8} "
              f"{'<=21 s':>6} {'peak':>5} {'file':>5}",
              f"{'':<14} {'':>5} {'':>5} {'rows':>4} {'s':>8} {'rows':>5} {'':>8} {'warn':>6} {'MiB':>5} {'MiB':>5}"]
    for rd in rounds:
        for c in rd["calm"]:
            lines.append(f"{c['workload']:<14} {c['seconds']:>5.0f} {c['rows']:>5} {c['with_eta']:>4} "
                         f"{_s(c['min_eta_s']):>8} {c['warnings']:>5} {c['episodes']:>8} "
                         f"{c['warnings_first_window']:>6} {c['peak_mib']:>5.0f} {c['max_file_mib']:>5.0f}")
    return "\n".join(lines)


def summary(rounds: list[dict[str, Any]], threshold: float) -> str:
    lines = ["", "Summary"]
    labels = list(dict.fromkeys(g["workload"] for rd in rounds for g in rd["grow"]))
    for label in labels:
        runs = [g for rd in rounds for g in rd["grow"] if g["workload"] == label and "climb_last_half_s" in g]
        if not runs:
            lines.append(f"  {label}: never killed by the kernel")
            continue
        met = sum(g["met"] for g in runs)
        leads = [g["lead_s"] for g in runs if g["lead_s"] is not None]
        needs = [g["threshold_needed_s"] for g in runs if g["threshold_needed_s"] is not None]
        need = (f"a threshold above {max(needs):.0f} s" if len(needs) == len(runs)
                else "an estimate earlier than the source made one")
        lines.append(f"  {label}: goal {'met' if met == len(runs) else 'NOT met'} in {met}/{len(runs)} "
                     f"(median lead {_s(statistics.median(leads) if leads else None)} s, goal "
                     f"{statistics.median(g['goal_lead_s'] for g in runs):.1f} s); meeting it needs {need}")
    for label in dict.fromkeys(c["workload"] for rd in rounds for c in rd["calm"]):
        runs = [c for rd in rounds for c in rd["calm"] if c["workload"] == label]
        warns = sum(c["warnings"] for c in runs)
        eps = sum(c["episodes"] for c in runs)
        first = sum(c["warnings_first_window"] for c in runs)
        lines.append(f"  {label}: {warns} warning rows in {eps} episodes over {len(runs)} run(s) "
                     f"({'goal met' if warns == 0 else f'goal NOT met; {first} within {WINDOW + 1} s of the plateau'})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="1,4,16", help="growth rates, MiB/s, comma-separated (default 1,4,16)")
    ap.add_argument("--limit-mib", type=int, help="each cgroup's memory limit (default 256; 64 with --quick)")
    ap.add_argument("--threshold", type=float, default=60.0, help="warn below this eta, seconds (default 60)")
    ap.add_argument("--seconds", type=float, help="how long the flat and page-cache workloads run (default 60; "
                                                   "20 with --quick)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds, one after the other (default 1)")
    ap.add_argument("--quick", action="store_true", help="a 64 MiB limit and 20 s workloads")
    ap.add_argument("--scratch", type=Path, default=Path("/var/tmp"),
                    help="directory for the page-cache workload's file: a disk, not tmpfs (default /var/tmp)")
    ap.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark creates memory cgroups and causes OOM kills")
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    limit = (args.limit_mib or (64 if args.quick else 256)) * MiB
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    if os.statvfs(args.scratch).f_bavail * os.statvfs(args.scratch).f_frsize < 4 * limit:
        raise SystemExit(f"{args.scratch} has less than {4 * limit // MiB} MiB free for the page-cache workload")
    print(f"oom_warning: rates {args.rates} MiB/s, limit {limit // MiB} MiB, threshold {args.threshold:g} s, "
          f"flat and page cache {seconds:g} s, {args.repeat} round(s), started {time.strftime('%F %T %Z')}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pxo-bench-warn-", dir=args.scratch) as scratch:
        rounds = [one_round(rates, limit, seconds, args.threshold, Path(scratch)) for _ in range(args.repeat)]
    if args.output == "json":
        print(json.dumps({"threshold_s": args.threshold, "limit_mib": limit // MiB, "rounds": rounds}, indent=1))
    else:
        print(table(rounds, args.threshold))
        print(summary(rounds, args.threshold))
    grows = [g for rd in rounds for g in rd["grow"]]
    calm = [c for rd in rounds for c in rd["calm"]]
    ok = all(g.get("met") for g in grows) and not any(c["warnings"] for c in calm)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
