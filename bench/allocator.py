"""What edge/allocator.py's IdleRelease (the memory answers freed goes back to the kernel
once the store is idle for a second) costs in CPU and saves in memory, side by side in one
run: against DuckDB's allocator left alone, a purge after every answer, and jemalloc told
to return each page as it is freed.

Per round, one child process per variant, each opening the same store of synthetic
oom_events rows (bench/query_scale.py's generate()) as the edge does (edge/store.Store:
one thread, the edge's memory limit) and answering bench/execute_cost.py's fragments
--repeat times through Store.execute, --pause seconds apart (0.05: a burst, as a
collector's fan-out or a dashboard asks; 2: a question every 2 s, as bench/edge_memory.py
asks). Each child reports its CPU over the answers, and its resident memory (VmRSS) 2 s
after the last one; the order of the variants rotates between rounds. Ratios are what
to read.

    .venv/bin/python bench/allocator.py [--rows 1000000] [--repeat 20] [--rounds 3] [--pause 0.05]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from execute_cost import PIPES
from query_scale import generate

DECAY_ENV = "DUCKDB_JE_MALLOC_CONF"  # read by DuckDB's bundled jemalloc when it starts
VARIANTS = {  # name: (seconds idle before the store releases, or None: never; DUCKDB_JE_MALLOC_CONF)
    "DuckDB's default": (None, None),
    "IdleRelease after 1 s (the edge)": (1.0, None),
    "a purge after every answer": (0.0, None),
    f"{DECAY_ENV}=dirty_decay_ms:0": (None, "dirty_decay_ms:0,muzzy_decay_ms:0"),
}


def child(path: Path, repeat: int, pause: float, idle: float | None) -> None:
    """Answer every fragment ``repeat`` times, as the edge does; print CPU s and VmRSS KiB."""
    from pxo.collector.plan import plan_pipe
    from pxo.edge import allocator
    from pxo.edge.sources import all_tables
    from pxo.edge.store import Store

    if idle is None:
        allocator.release = lambda: False  # the store's IdleRelease calls it: the edge before it
    store = Store(path, all_tables(), threads=1, memory_limit="128MB", release_idle=idle or 0.0)
    catalog = {t.name: t for t in all_tables()}
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    frags = []
    for pipe in PIPES.values():
        plan = plan_pipe(pipe, catalog, now=now)
        frags.append((plan.fragments["oom_events"].sql("node-1"), plan.start, plan.end or now))
    cpu = 0.0
    for _ in range(repeat):
        for sql, start, end in frags:
            c0 = time.process_time()
            for batch in store.execute(sql, start=start, end=end):
                batch.ipc()
            cpu += time.process_time() - c0
            time.sleep(pause)
    time.sleep(2)
    rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    store.close()
    print(json.dumps({"cpu": cpu, "rss_kib": rss}))


def run(path: Path, repeat: int, pause: float, idle: float | None, conf: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != DECAY_ENV}
    if conf is not None:
        env[DECAY_ENV] = conf
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--repeat", str(repeat),
                          "--pause", str(pause), *(["--idle", str(idle)] if idle is not None else [])],
                         env=env, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause", type=float, default=0.05, help="seconds between questions")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--idle", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.repeat, args.pause, args.idle)
        return 0
    root = Path(tempfile.mkdtemp(prefix="pxo-bench-alloc-"))
    try:
        generate(root / "edge.duckdb", args.rows, 1)
        names = list(VARIANTS)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for i in range(args.rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                runs[name].append(run(root / "edge.duckdb", args.repeat, args.pause, *VARIANTS[name]))
        med = {n: {m: statistics.median(r[m] for r in v) for m in ("cpu", "rss_kib")} for n, v in runs.items()}
        base = med[names[0]]
        n = args.repeat * len(PIPES)
        print(f"{args.rows} rows; {n} answers per child ({', '.join(PIPES)}), {args.pause} s apart; "
              f"{args.rounds} rounds, medians")
        print(f"{'allocator':<40} {'CPU ms/answer':>13} {'ratio':>6} {'RSS after':>10} {'ratio':>6}")
        for name in names:
            m = med[name]
            print(f"{name:<40} {m['cpu'] / n * 1000:13.2f} {m['cpu'] / base['cpu']:6.2f} "
                  f"{m['rss_kib'] / 1024:6.0f} MiB {m['rss_kib'] / base['rss_kib']:6.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
