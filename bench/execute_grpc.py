"""The edge's CPU per Execute over gRPC, against DuckDB alone: a real edge process on
loopback (no probes), asked the collector's fragments one call at a time, its CPU read
from /proc; beside it, in this process, DuckDB answers the same SQL over a copy of the
same file (`execute().fetchall()`, one thread, as the edge's store runs). The difference
per call is what the edge adds beyond DuckDB: gRPC's Python server, the SQL gate, the
store's cursor and timer, the Arrow IPC answer. bench/execute_cost.py is the same
without gRPC; bench/query_scale.py measures it with 16 edges sharing the cores.

Calls alternate between the edge and DuckDB alone, one each in turn; medians of the rounds. Goal (issue
15): at most 1 ms of CPU per Execute beyond DuckDB. ``--before DIR`` runs a second edge
from another tree (a directory holding a ``pxo`` package, e.g. a worktree of an older
commit) in the same rounds, so that a change is measured side by side, not minutes apart.
``--threads`` also splits the edge's CPU per call by thread (from /proc/PID/task): the busiest
thread (gRPC's worker: the handler and DuckDB), the other Python threads (gRPC's poller among
them) and gRPC's event-engine threads. ``--bisect`` also runs bare servers over the same store
(bench/execute_server.py), each one layer more than the last: DuckDB alone behind gRPC, the
Arrow stream, the IPC batches, the store's ``execute``; the steps between them say where the
edge's extra goes.

    .venv/bin/python bench/execute_grpc.py [--rows 1000000] [--calls 200] [--rounds 5] [--before DIR] [--threads]
                                           [--bisect]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from execute_cost import PIPES
from execute_server import MODES
from query_scale import cpu_seconds, generate

from pxo.collector.plan import plan_pipe
from pxo.common.addr import read_addr_file
from pxo.edge.sources import all_tables
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

GOAL_MS = 1.0


def unix_us(t: dt.datetime | None) -> int:
    return 0 if t is None else int(t.replace(tzinfo=dt.UTC).timestamp() * 1_000_000)


def thread_ticks(pid: int) -> dict[tuple[int, str], int]:
    """(thread id, name) -> user + system clock ticks, for every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[(int(tid), name)] = int(fields[11]) + int(fields[12])
    return out


def by_role(before: dict[tuple[int, str], int], after: dict[tuple[int, str], int], calls: int) -> dict[str, float]:
    """CPU ms per call of the busiest thread, the other Python threads and the event engine's."""
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    spent = {k: (v - before.get(k, 0)) * tick_ms / calls for k, v in after.items()}
    engine = sum(v for (_, name), v in spent.items() if name.startswith("event_engine"))
    rest = {k: v for k, v in spent.items() if not k[1].startswith("event_engine")}
    busiest = max(rest.values(), default=0.0)
    return {"busiest": busiest, "others": sum(rest.values()) - busiest, "engine": engine}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=200, help="Execute calls per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", type=Path, help="also run an edge from this tree's pxo package, side by side")
    ap.add_argument("--threads", action="store_true", help="also split the edge's CPU per call by thread")
    ap.add_argument("--bisect", action="store_true", help="also run bare servers, one layer at a time "
                    "(bench/execute_server.py)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pxo-bench-grpc-"))
    edges: dict[str, tuple[subprocess.Popen[bytes], pxo_pb2_grpc.EdgeStub]] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        generate(root / "alone.duckdb", args.rows, 1)
        servers: list[tuple[str, Path | None]] = [("edge", None)]
        if args.before:
            servers.append(("before", args.before))
        if args.bisect:
            servers += [(mode, None) for mode in MODES]
        for name, tree in servers:
            (root / name).mkdir()
            shutil.copy(root / "alone.duckdb", root / name / "edge.duckdb")
            env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115
            cmd = [sys.executable, "-m", "pxo.edge", "--listen", "127.0.0.1:0", "--data-dir", str(root / name),
                   "--node", "node-1", "--sources", "[]", "--log-level", "WARNING"]
            if name in MODES:
                cmd = [sys.executable, str(Path(__file__).with_name("execute_server.py")), str(root / name), name]
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            procs.append(proc)
            while (addr := read_addr_file(root / name / "edge.addr")) is None:
                if proc.poll() is not None:
                    raise SystemExit((root / f"{name}.log").read_text()[-2000:])
                time.sleep(0.05)
            edges[name] = (proc, pxo_pb2_grpc.EdgeStub(grpc.insecure_channel(addr)))
        alone = duckdb.connect(str(root / "alone.duckdb"), config={"threads": 1, "memory_limit": "32MB"})
        catalog = {t.name: t for t in all_tables()}
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        print(f"{args.rows} rows; CPU ms per call, median of {args.rounds} rounds of {args.calls} calls")
        head = "".join(f" {n + ' (gRPC)':>14} {'extra':>7}" for n in edges)
        print(f"{'fragment':<20} {'DuckDB alone':>12}{head}  goal <= {GOAL_MS} ms extra")
        worst = 0.0
        for name, pipe in PIPES.items():
            plan = plan_pipe(pipe, catalog, now=now)
            sql = plan.fragments["oom_events"].tree.sql(dialect="duckdb").replace("$node", "'node-1'")
            sql = sql.replace('$"end"', "$end").replace('$"start"', "$start")
            start, end = plan.start, plan.end or now
            params = {k: v for k, v in (("start", start), ("end", end)) if f"${k}" in sql}
            request = pxo_pb2.Fragment(sql=sql, start_unix_us=unix_us(start), end_unix_us=unix_us(end))
            for _ in range(3):  # warm them all
                for _proc, stub in edges.values():
                    list(stub.Execute(request, timeout=60))
                alone.execute(sql, params).fetchall()
            rounds: dict[str, list[float]] = {n: [] for n in ("alone", *edges)}
            roles: dict[str, list[dict[str, float]]] = {n: [] for n in edges}
            for _ in range(args.rounds):
                # one call each in turn: every edge sees the same machine, and none idles long
                # enough for its store to give its memory back between its calls (edge/allocator.py)
                before = {n: cpu_seconds(proc) for n, (proc, _stub) in edges.items()}
                ticks = {n: thread_ticks(proc.pid) for n, (proc, _stub) in edges.items()} if args.threads else {}
                spent = 0.0
                for _ in range(args.calls):
                    for _proc, stub in edges.values():
                        for reply in stub.Execute(request, timeout=60):
                            assert reply.ipc_stream
                    t0 = time.thread_time()  # DuckDB with one thread answers on this one
                    alone.execute(sql, params).fetchall()
                    spent += time.thread_time() - t0
                rounds["alone"].append(spent / args.calls * 1000)
                for n, (proc, _stub) in edges.items():
                    rounds[n].append((cpu_seconds(proc) - before[n]) / args.calls * 1000)
                    if args.threads:
                        roles[n].append(by_role(ticks[n], thread_ticks(proc.pid), args.calls))
            a = statistics.median(rounds["alone"])
            cells = ""
            for n in edges:
                e = statistics.median(rounds[n])
                cells += f" {e:14.2f} {e - a:7.2f}"
                if n == "edge":
                    worst = max(worst, e - a)
            print(f"{name:<20} {a:12.2f}{cells}")
            for n in roles if args.threads else ():
                med = {k: statistics.median(r[k] for r in roles[n]) for k in ("busiest", "others", "engine")}
                print(f"{'':<20} {n}: busiest thread {med['busiest']:.2f} ({med['busiest'] - a:+.2f} on DuckDB alone), "
                      f"other Python threads {med['others']:.2f}, event engine {med['engine']:.2f}")
        alone.close()
        return 0 if worst <= GOAL_MS else 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
