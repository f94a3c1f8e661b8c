"""What the store's memory limit (the edge's --store-memory-mb) buys: the CPU per question
and the resident memory of an edge's store over a day-old store, side by side in one run.

DuckDB keeps the blocks a query read in its buffer pool, up to the limit, so an edge whose
store is bigger than the limit sits at about the limit plus its code. A smaller limit reads
blocks again (from the page cache) and spills big intermediates to disk sooner. Per round,
one child process per limit opens the same store of --rows alloc_rate rows
(bench/edge_memory.py's prefill(): a week of 500 processes in 50 cgroups) as the edge does
(edge/store.Store, one thread), answers bench/edge_memory.py's questions --repeat times and
reports its CPU over them and its VmRSS after them, then the CPU of one group-by bigger
than every limit. The order of the limits rotates between rounds. Ratios against the
first limit are what to read.

    .venv/bin/python bench/store_memory.py [--limits 128,64,48,32] [--rows 5000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_memory import QUERIES, prefill

BIG = 'SELECT "pid", "comm", count(*) AS "n", sum("alloc_bytes") AS "b" FROM "alloc_rate" GROUP BY 1, 2, "time"'


def child(path: Path, limit_mb: int, repeat: int) -> None:
    from pxo.edge.sources import all_tables
    from pxo.edge.store import Store

    store = Store(path, all_tables(), threads=1, memory_limit=f"{limit_mb}MB")
    cpu = 0.0
    for _ in range(repeat):
        for sql in QUERIES:
            c0 = time.process_time()
            for batch in store.execute(sql):
                batch.ipc()
            cpu += time.process_time() - c0
    rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    c0 = time.process_time()
    for batch in store.execute(BIG, row_limit=1):  # ~5 million groups: bigger than every limit here
        batch.ipc()
    big = time.process_time() - c0
    store.close()
    print(json.dumps({"cpu": cpu, "big": big, "rss_kib": rss}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limits", default="128,64,48,32", help="MiB, comma-separated; the first is the reference")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.limit, args.repeat)
        return 0
    limits = [int(x) for x in args.limits.split(",")]
    root = Path(tempfile.mkdtemp(prefix="pxo-bench-storemem-"))
    try:
        prefill(root / "edge.duckdb", args.rows)
        runs: dict[int, list[dict[str, float]]] = {m: [] for m in limits}
        for i in range(args.rounds):
            for m in limits[i % len(limits):] + limits[:i % len(limits)]:
                out = subprocess.run([sys.executable, __file__, "--child", str(root / "edge.duckdb"), "--limit",
                                      str(m), "--repeat", str(args.repeat)], capture_output=True, text=True,
                                     check=True)
                runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {m: {k: statistics.median(r[k] for r in v) for k in ("cpu", "big", "rss_kib")} for m, v in runs.items()}
        base = med[limits[0]]
        n = args.repeat * len(QUERIES)
        print(f"{args.rows} alloc_rate rows; {n} questions per child (bench/edge_memory.py's), then one group-by "
              f"of ~{args.rows} groups; {args.rounds} rounds, medians")
        print(f"{'limit':>7} {'CPU ms/question':>15} {'ratio':>6} {'big group-by s':>14} {'ratio':>6} "
              f"{'RSS after':>10} {'ratio':>6}")
        for m in limits:
            r = med[m]
            print(f"{m:4d} MB {r['cpu'] / n * 1000:15.1f} {r['cpu'] / base['cpu']:6.2f} {r['big']:14.2f} "
                  f"{r['big'] / base['big']:6.2f} {r['rss_kib'] / 1024:6.0f} MiB {r['rss_kib'] / base['rss_kib']:6.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
