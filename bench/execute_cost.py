"""The edge's own CPU per Execute, in one process: what `Store.execute` plus the Arrow IPC
answer cost beyond DuckDB answering the same fragment SQL alone (`execute().fetchall()`),
for the fragments the collector's planner sends (bench/query_scale.py's questions), over
one edge's synthetic oom_events rows (bench/query_scale.py's generate()). No gRPC: that is
bench/query_scale.py's "Execute extra". Interleaved, best of 3 rounds of --repeat each;
ratios and differences, not absolute times, are what to read on a noisy machine.

    .venv/bin/python bench/execute_cost.py [--rows 1000000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from query_scale import generate

from pxo.collector.plan import plan_pipe
from pxo.edge.sources import all_tables
from pxo.edge.store import Store

PIPES = {
    "top 10 by anon_rss": "oom_events | last 7d | top 10 by anon_rss_bytes",
    "count by pod": "oom_events | last 7d | summarize kills = count() by pod",
    "one row (1 min)": "oom_events | last 1m | summarize n = count()",
}


def arrowipc_encode(batch: object) -> bytes:
    from pxo.common import arrowipc

    return arrowipc.encode(batch)  # type: ignore[arg-type]


def cpu_ms(f: Callable[[], object], repeat: int) -> float:
    t0 = time.process_time()
    for _ in range(repeat):
        f()
    return (time.process_time() - t0) / repeat * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pxo-bench-exec-"))
    try:
        generate(root / "edge.duckdb", args.rows, 1)
        store = Store(root / "edge.duckdb", all_tables(), threads=1, memory_limit="128MB")
        catalog = {t.name: t for t in all_tables()}
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        print(f"{args.rows} rows, CPU ms per fragment (best of 3 rounds of {args.repeat})")
        print(f"{'fragment':<20} {'DuckDB alone':>12} {'Store.execute+IPC':>18} {'extra':>7} {'ratio':>6}")
        for name, pipe in PIPES.items():
            plan = plan_pipe(pipe, catalog, now=now)
            sql = plan.fragments["oom_events"].tree.sql(dialect="duckdb").replace("$node", "'node-1'")
            start, end = plan.start, plan.end or now
            params = {k: v for k, v in (("start", start), ("end", end)) if f"${k}" in sql or f'$"{k}"' in sql}
            sql = sql.replace('$"end"', "$end").replace('$"start"', "$start")

            def alone(sql: str = sql, params: dict[str, dt.datetime] = params) -> None:
                cur = store._con.cursor()
                try:
                    cur.execute(sql, params).fetchall()
                finally:
                    cur.close()

            def edge(sql: str = sql, start: dt.datetime | None = start, end: dt.datetime = end) -> None:
                for batch in store.execute(sql, start=start, end=end):
                    # an edge before edge/arrowout.py (run with PYTHONPATH at its tree) yielded pyarrow batches
                    batch.ipc() if hasattr(batch, "ipc") else arrowipc_encode(batch)

            rounds: dict[str, list[float]] = {"alone": [], "edge": []}
            for _ in range(3):
                rounds["alone"].append(cpu_ms(alone, args.repeat))
                rounds["edge"].append(cpu_ms(edge, args.repeat))
            a, e = min(rounds["alone"]), min(rounds["edge"])
            print(f"{name:<20} {a:12.2f} {e:18.2f} {e - a:7.2f} {e / a:6.2f}")
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
