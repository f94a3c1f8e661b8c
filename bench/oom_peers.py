"""pxo and its peers on the same memory.oom.group kill of 3, on each of Debian's kernels.

Boots each kernel (tests/helpers/guest.py) and, inside, runs bcc's
``oomkill-bpfcc`` (a kprobe on oom_kill_process), a bpftrace one-liner on
``oom:mark_victim`` (the tracepoint the kernel offers for exactly this) and
pxo's OOM source side by side, then kills a cgroup of 3 processes with
memory.oom.group set. It reports, for each, how many victims it named against
the kernel's own counters (memory.events), and which fields it gives. Figures,
not pass/fail: scripts/kernel-matrix.sh appends the table to docs/kernels.md.

    python bench/oom_peers.py bookworm                     # one kernel
    python bench/oom_peers.py --markdown out.md bullseye bookworm trixie sid

The peers get what they need that a fresh node lacks: tracefs is mounted for
them (bpftrace's tracepoints need it; pxo does not), and bpftrace comes from
Debian (installed by scripts/kernel-matrix.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the guest runner

MARK = "@@pxo-peers@@"
BPFTRACE = 'tracepoint:oom:mark_victim { printf("victim pid=%d comm=%s\\n", args->pid, comm); }'


def _start(argv: list[str], out: Path, ready: str, timeout: float = 120) -> subprocess.Popen[bytes] | None:
    """Start a peer writing to ``out``; None when it cannot run here (its error stays in ``out``)."""
    f = out.open("wb")
    # bcc's tools are Python: unbuffered, or their banner (and kills) sit in a buffer until they exit
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready in out.read_text(errors="replace"):
            return p
        if p.poll() is not None:
            return None
        time.sleep(0.2)
    p.kill()
    return None


def inside() -> dict[str, Any]:
    """In the guest: the three observers, one group kill, what each reported."""
    from pxo.edge.cgroups import ScratchCgroup
    from pxo.edge.oomdrill import start_allocator
    from pxo.edge.sources.base import SourceContext
    from pxo.edge.sources.oom import OomSource
    from tests.helpers.sink import ListSink
    from tests.helpers.workloads import Holder, memory_events

    if not Path("/sys/kernel/tracing/events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"], check=False)
    tmp = Path("/tmp/peers")
    tmp.mkdir(exist_ok=True)
    peers: dict[str, subprocess.Popen[bytes] | None] = {}
    oomkill = shutil.which("oomkill-bpfcc") or "/usr/sbin/oomkill-bpfcc"
    peers["oomkill-bpfcc"] = _start([oomkill], tmp / "oomkill-bpfcc", "Tracing OOM kills")
    bpftrace = shutil.which("bpftrace")
    peers["bpftrace"] = _start([bpftrace, "-e", BPFTRACE], tmp / "bpftrace", "Attaching") if bpftrace else None
    sink = ListSink()
    pxo = OomSource(SourceContext(sink=sink))
    pxo.start()
    with ScratchCgroup(64 << 20, prefix="pxo-peers") as cg:
        (cg.dir / "memory.oom.group").write_text("1")
        with Holder(cg, 4, python=sys.executable) as a, Holder(cg, 4, python=sys.executable) as b:
            grower = start_allocator(cg, 256)
            grower.wait(timeout=120)
            a.proc.wait(timeout=30)
            b.proc.wait(timeout=30)
            pids = {a.pid, b.pid, grower.pid}
        events = memory_events(cg)
    time.sleep(2)
    pxo.stop()
    for p in peers.values():
        if p is not None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    out: dict[str, Any] = {"release": os.uname().release, "kernel": events, "peers": {}}
    rows = [r for r in sink.where("oom_events") if r["pid"] in pids]
    out["peers"]["pxo"] = {"victims": len(rows), "named": sorted(len(pids & {r["pid"]}) for r in rows).count(1),
                           "fields": "pid, tid, comm, uid, memory (anon/file/shmem/swap/page tables), trigger, "
                                     "memory and v2 cgroups, constraint, cgroup that ran out, group, chosen, "
                                     "pool, cgroup usage/limit/peak, candidates"}
    for name, p in peers.items():
        text = (tmp / name).read_text(errors="replace") if (tmp / name).exists() else ""
        if p is None:
            out["peers"][name] = {"victims": None, "error": text.strip().splitlines()[-1:] or ["not installed"]}
            continue
        # oomkill-bpfcc: "... OOM kill of PID 166 ("x"), ..."; bpftrace: "victim pid=166 ..."
        lines = [ln for ln in text.splitlines() if "OOM kill of PID" in ln or ln.startswith("victim pid=")]
        named = {pid for pid in pids for ln in lines if f"PID {pid} " in ln or f"pid={pid} " in ln}
        out["peers"][name] = {"victims": len(lines), "named": len(named), "sample": lines[:1]}
    return out


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["## Peers on the same group kill", "",
             "A cgroup of 3 processes with memory.oom.group set, killed by the kernel once; run by",
             "`python bench/oom_peers.py` on each kernel (figures, not pass/fail). The kernel's own",
             "counters say 3 tasks died (it counts the chosen victim twice in `oom_kill`).", "",
             "| kernel | memory.events | pxo rows | oomkill-bpfcc | bpftrace on oom:mark_victim |",
             "|---|---|---|---|---|"]
    for suite, r in results.items():
        if "error" in r:
            lines.append(f"| {suite} | {r['error']} | | | |")
            continue
        k = r["kernel"]
        ev = f"oom_kill {k.get('oom_kill')}, oom_group_kill {k.get('oom_group_kill', 'n/a')}"
        cells = []
        for name in ("pxo", "oomkill-bpfcc", "bpftrace"):
            p = r["peers"].get(name, {})
            cells.append(f"{p['victims']} victims" if p.get("victims") is not None
                         else f"did not run: {' '.join(p.get('error', []))[:80]}")
        lines.append(f"| {suite} {r['release']} | {ev} | " + " | ".join(cells) + " |")
    lines += ["", "What each gives per victim: pxo, one row with "
              + next((r["peers"]["pxo"]["fields"] for r in results.values() if "peers" in r), "") + ";",
              "oomkill-bpfcc, the triggering and killed pid and comm, the load average and \"pages\" (the size",
              "of the pool the kernel chose from, oc->totalpages, not the victim's usage); bpftrace's",
              "one-liner, what the tracepoint carries (pid, and comm of the triggering task here).", ""]
    samples = {n: p.get("sample") for r in results.values() for n, p in r.get("peers", {}).items() if p.get("sample")}
    for n, s in samples.items():
        lines.append(f"- {n} prints: `{s[0].strip()}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suites", nargs="*", default=["bookworm"])
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", type=Path, help="write the docs/kernels.md section here")
    args = ap.parse_args()
    if args.inside:
        print(MARK + json.dumps(inside()), flush=True)
        return 0
    from tests.helpers.guest import GuestError, run_in_guest

    def one(suite: str) -> dict[str, Any]:
        try:
            r = run_in_guest(suite, [str(ROOT / ".venv/bin/python"), str(ROOT / "bench/oom_peers.py"), "--inside"],
                             cwd=str(ROOT), timeout=900, env={"PYTHONDONTWRITEBYTECODE": "1"})
        except GuestError as exc:
            return {"error": str(exc).splitlines()[0]}
        _, _, raw = r.output.partition(MARK)
        return json.loads(raw.splitlines()[0]) if raw else {"error": r.output.strip()[-200:]}

    with ThreadPoolExecutor(max_workers=2) as pool:  # a guest takes one core
        results = dict(zip(args.suites, pool.map(one, args.suites), strict=True))
    for suite, r in results.items():
        print(f"{suite}: {json.dumps(r)}", file=sys.stderr)
    text = markdown(results)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
