"""Edge memory benchmark: the resident memory of a real edge with every source on,
under a workload that exercises them all, against the goal (128 MiB steady, 200 MiB
peak; Pixie's node agent is given 2 GiB), with where it goes (by mapping: libraries,
malloc heap, anonymous memory).

The workload, for --seconds: a page-fault-heavy allocator (alloc_rate), short
processes started and ended continuously (process_exits), a user-space SIGKILL
now and then (kill_events), and an OOM kill every few seconds in a
memory-limited cgroup beneath this script's own cgroup (oom_events,
oom_candidates, reclaim_stalls). Meanwhile the edge answers what a collector asks
of it every 2 s over gRPC (a top 10, a count by cgroup, the last 1,000 rows, the
latest kills): a serving edge, not an idle one. The edge's VmRSS is sampled every
second.

    .venv/bin/python bench/edge_memory.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from pxo.common import arrowipc
from pxo.common.addr import read_addr_file
from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.oomdrill import start_allocator
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

# What a collector asks an edge, as fragments (collector/plan renders such SQL).
QUERIES = (
    'SELECT "cgroup_path", sum("alloc_bytes") AS "bytes" FROM "alloc_rate" GROUP BY 1 ORDER BY 2 DESC LIMIT 10',
    'SELECT "cgroup_id", count(*) AS "n" FROM "process_exits" GROUP BY 1',
    'SELECT * FROM "alloc_rate" ORDER BY "time" DESC LIMIT 1000',
    'SELECT * FROM "oom_events" ORDER BY "time" DESC LIMIT 100',
)

GOAL_MIB = 128  # steady; and at most PEAK_GOAL_MIB at any time, start-up included
PEAK_GOAL_MIB = 200

# Where resident memory goes, by mapping (/proc/<pid>/smaps): the first pattern a mapping's
# path contains names it; anonymous mappings are Python's and DuckDB's heaps.
_GROUPS = (
    ("eBPF ring buffers (kernel memory mapped in)", ("anon_inode:bpf-map",)),
    ("BCC/LLVM (libbcc, libLLVM, libclang)", ("libbcc", "libLLVM", "libclang")),
    ("DuckDB (library)", ("duckdb",)),
    ("pyarrow (libarrow)", ("libarrow", "libparquet", "pyarrow")),
    ("gRPC (cygrpc)", ("grpc",)),
    ("Python (interpreter, stdlib .so)", ("python3", "libpython", "lib-dynload")),
    ("other shared libraries", (".so",)),
)


def breakdown(pid: int) -> dict[str, int]:
    """Resident KiB per group of mappings of process ``pid``."""
    out: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header: range perms offset dev inode [path]
            parts = line.split()
            path = parts[5] if len(parts) > 5 else ""
            if path == "[heap]":
                name = "heap: malloc (brk)"
            elif not path or path.startswith("["):
                name = "anonymous: Python objects, DuckDB buffers, thread stacks (mmap)"
            else:
                name = next((g for g, pats in _GROUPS if any(p in path for p in pats)), "other files")
        elif first == "Rss:":
            out[name] = out.get(name, 0) + int(line.split()[1])
    return out


def print_breakdown(kib: dict[str, int], title: str) -> None:
    print(title)
    for name, v in sorted(kib.items(), key=lambda kv: -kv[1]):
        if v >= 512:
            print(f"  {v / 1024:7.1f} MiB  {name}")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def workload(stop: threading.Event, counts: dict[str, int]) -> None:
    churn = [sys.executable, "-c", "import mmap; m = mmap.mmap(-1, 64 << 20); "
             "[m.__setitem__(i, 1) for i in range(0, 64 << 20, 4096)]"]
    with ScratchCgroup(32 << 20, prefix="pxo-bench-mem") as cg:
        last_oom = 0.0
        while not stop.is_set():
            subprocess.run(churn, check=False)  # 64 MiB of page faults, then an exit
            counts["processes"] += 1
            sleeper = subprocess.Popen(["sleep", "30"])
            sleeper.send_signal(signal.SIGKILL)  # a user-space kill
            sleeper.wait()
            counts["kills"] += 1
            if time.monotonic() - last_oom > 3:
                start_allocator(cg, 128).wait(timeout=60)
                counts["ooms"] += 1
                last_oom = time.monotonic()


def prefill(path: Path, rows: int) -> None:
    """alloc_rate rows over the last 7 days, as an edge's sources would have written them
    (500 processes in 50 cgroups, one row a process every 10 s), committed and checkpointed."""
    import duckdb

    from pxo.edge.sources import all_tables

    con = duckdb.connect(str(path))
    for t in all_tables():
        con.execute(t.ddl())
    con.execute(f"""
        INSERT INTO alloc_rate BY NAME
        SELECT now()::TIMESTAMP - to_seconds(((i // 500) * 10) % (7 * 86400)) AS "time", 10.0 AS interval_s,
               (1000 + i % 500)::INTEGER AS pid, 'proc' || (i % 500) AS comm,
               '/sys/fs/cgroup/kubepods.slice/pod' || (i % 50) AS cgroup_path, (i % 50)::UBIGINT AS cgroup_id,
               ((i * 7919) % 100000 * 4096)::UBIGINT AS alloc_bytes, ((i * 7919) % 100000)::UBIGINT AS alloc_pages
        FROM range({rows}) r(i)""")
    con.execute("CHECKPOINT")
    con.close()


def asker(addr: str, stop: threading.Event, counts: dict[str, int]) -> None:
    with grpc.insecure_channel(addr) as channel:
        stub = pxo_pb2_grpc.EdgeStub(channel)
        while not stop.wait(2):
            for sql in QUERIES:
                for msg in stub.Execute(pxo_pb2.Fragment(sql=sql), timeout=30):
                    arrowipc.decode(msg.ipc_stream)
                counts["queries"] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sources", default="", help="the edge's --sources (default: every source)")
    ap.add_argument("--no-queries", action="store_true", help="no gRPC queries (an idle edge)")
    ap.add_argument("--store-rows", type=int, default=0,
                    help="start on a store already holding this many alloc_rate rows (an edge that has run "
                         "for days: the queries then read megabytes, which DuckDB's buffer pool keeps)")
    ap.add_argument("--kubernetes", action="store_true",
                    help="as in a cluster: the edge watches its node's pods on a loopback API server "
                         "(tests/helpers/kubeapi.py, 50 pods) through a kubeconfig")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the edge loads eBPF programs")
    data = Path(tempfile.mkdtemp(prefix="pxo-bench-mem-"))
    if args.store_rows:
        prefill(data / "edge.duckdb", args.store_rows)
    log = open(data / "edge.log", "wb")  # noqa: SIM115
    extra = ["--sources", args.sources] if args.sources else []
    env = dict(os.environ)
    api = None
    if args.kubernetes:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.helpers.kubeapi import KubeAPI, pod

        api = KubeAPI(token="bench").start()
        node = "bench-node"
        for i in range(50):
            api.put_pod(pod(f"app-{i}", uid=f"00000000-0000-4000-8000-{i:012d}", node=node,
                            namespace=f"ns{i % 5}", containers={"app": f"{i:064x}"}))
        env["KUBECONFIG"] = str(api.kubeconfig(data))
        extra += ["--node", node]
    edge = subprocess.Popen([sys.executable, "-m", "pxo.edge", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                             *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    while (addr := read_addr_file(data / "edge.addr")) is None:
        if edge.poll() is not None:
            raise SystemExit((data / "edge.log").read_text()[-2000:])
        time.sleep(0.05)
    start_rss = status_kib(edge.pid, "VmRSS")
    start_peak = status_kib(edge.pid, "VmHWM")
    at_start = breakdown(edge.pid)
    stop = threading.Event()
    counts = {"processes": 0, "kills": 0, "ooms": 0, "queries": 0}
    worker = threading.Thread(target=workload, args=(stop, counts))
    worker.start()
    querier = threading.Thread(target=asker, args=(addr, stop, counts))
    if not args.no_queries:
        querier.start()
    samples = []
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            time.sleep(1)
            samples.append(status_kib(edge.pid, "VmRSS"))
    finally:
        stop.set()
        worker.join()
        if querier.is_alive():
            querier.join()
        peak = status_kib(edge.pid, "VmHWM")
        anon, file = status_kib(edge.pid, "RssAnon"), status_kib(edge.pid, "RssFile")
        at_end = breakdown(edge.pid)
        edge.send_signal(signal.SIGTERM)
        edge.wait(timeout=30)
        if api is not None:
            api.close()
    steady = statistics.median(samples[len(samples) // 2:])
    store = sum(f.stat().st_size for f in data.glob("edge.duckdb*"))
    print(f"workload over {args.seconds:.0f} s: {counts['processes']} processes, {counts['kills']} user kills, "
          f"{counts['ooms']} OOM kills; {counts['queries']} fragments answered")
    print(f"edge RSS: ready {start_rss / 1024:.0f} MiB (peak {start_peak / 1024:.0f} MiB until ready), steady "
          f"(median of the second half) {steady / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB; goal <= {GOAL_MIB} MiB "
          f"steady, <= {PEAK_GOAL_MIB} MiB peak")
    print(f"at the end: private (RssAnon) {anon / 1024:.0f} MiB, file-backed (shared library code) "
          f"{file / 1024:.0f} MiB")
    print(f"store on disk after the run: {store / 1024 / 1024:.1f} MiB")
    print("RSS every 10 s (MiB):", " ".join(f"{v / 1024:.0f}" for v in samples[::10]))
    print_breakdown(at_start, "where it goes when ready (resident, by mapping):")
    print_breakdown(at_end, "where it goes at the end:")
    return 0 if steady / 1024 <= GOAL_MIB and peak / 1024 <= PEAK_GOAL_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
