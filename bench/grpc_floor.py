"""What grpcio's Python server costs per call, by how long the call lasts (issue 15's per-Execute goal).

A bare server (a ThreadPoolExecutor, as the edge's) whose one unary method either waits N ms
(`sleep N`: the GIL released, no CPU) or computes for N ms of its own thread's CPU (`spin N`:
SHA-256 over 64 KiB at a time, which releases the GIL, as DuckDB does). The client calls each form in turn,
round after round, and reads the server's CPU per thread from /proc/PID/task/*/schedstat (ns).
Printed per form: the server's CPU per call beyond the handler's own work, split by thread:
the pool's worker (the handler), gRPC's polling thread (`_serve`), its event engine, the rest.

    .venv/bin/python bench/grpc_floor.py --calls 200 --rounds 5

If the extra grows with the call's length although the handler's own work is subtracted, the
server spends CPU while a call is in flight, and a longer fragment (the top 10) costs the
edge more beyond DuckDB than a short one, whatever the handler does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent import futures

FORMS = ("sleep 0", "sleep 3", "sleep 12", "sleep 30", "spin 3", "spin 12")


def serve() -> None:
    import grpc

    data = os.urandom(1 << 16)  # ~0.1 ms a hash: the spin overshoots its N ms by no more

    def work(request: bytes, context: object) -> bytes:
        kind, n = request.decode().split()
        if kind == "ids":
            return json.dumps({str(t.native_id): t.name for t in threading.enumerate()}).encode()
        ms = float(n)
        if kind == "sleep":
            time.sleep(ms / 1000)
        else:
            end = time.thread_time() + ms / 1000
            while time.thread_time() < end:
                hashlib.sha256(data).digest()
        return b"x"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.method_handlers_generic_handler("bench.Floor", {"Work": grpc.unary_unary_rpc_method_handler(work)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def thread_cpu(pid: int) -> dict[str, int]:
    """CPU ns per thread id, from schedstat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except OSError:
            continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="calls per form per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    import grpc

    proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        call = channel.unary_unary("/bench.Floor/Work")
        for _ in range(100):
            call(b"sleep 0")
        names = json.loads(call(b"ids 0"))

        def role(tid: str) -> str:
            name = names.get(tid, "")
            if name.startswith("ThreadPoolExecutor"):
                return "worker"
            if "_serve" in name:
                return "poller"
            if not name:
                with open(f"/proc/{proc.pid}/task/{tid}/comm") as f:
                    return "event engine" if "event_engine" in f.read() else "other"
            return "other"

        per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for _ in range(args.rounds):
            for form in FORMS:
                before = thread_cpu(proc.pid)
                for _ in range(args.calls):
                    call(form.encode())
                after = thread_cpu(proc.pid)
                names.update(json.loads(call(b"ids 0")))  # the pool starts threads as it needs them
                split: dict[str, float] = defaultdict(float)
                for tid, ns in after.items():
                    split[role(tid)] += (ns - before.get(tid, 0)) / args.calls / 1e6
                own = float(form.split()[1]) if form.startswith("spin") else 0.0
                split["worker"] -= own
                for k in ("worker", "poller", "event engine", "other"):
                    per[form][k].append(split[k])
                per[form]["total"].append(sum(split.values()))
    finally:
        proc.kill()
        proc.wait()
    print(f"grpcio's Python server, CPU per call beyond the handler's own work (ms; median of {args.rounds} rounds "
          f"of {args.calls} calls)\n")
    print("| call | extra | worker | poller | event engine | other |")
    print("|---|---|---|---|---|---|")
    med = {f: {k: statistics.median(v) for k, v in per[f].items()} for f in FORMS}
    for f in FORMS:
        m = med[f]
        print(f"| {f} ms | **{m['total']:.2f}** | {m['worker']:.2f} | {m['poller']:.2f} | {m['event engine']:.2f} "
              f"| {m['other']:.2f} |")
    base = med["sleep 0"]["total"]
    print(f"\nextra of a 12 ms wait / a call that returns at once: {med['sleep 12']['total'] / base:.2f}x; "
          f"of 12 ms of work / 3 ms of work: {med['spin 12']['total'] / med['spin 3']['total']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
