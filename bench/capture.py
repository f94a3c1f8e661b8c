"""Capture benchmark: of the OOM kills the kernel counted, how many a running edge
recorded, and how long from the kill until the row is queryable.

A real edge process (all sources) serves its store on loopback; this script
causes N real OOM kills in memory-limited cgroups beneath its own cgroup and,
for each, polls the edge (every 5 ms) until the victim's row answers. The
delay is measured from the kernel's own timestamp of the kill (the row's
`time`, taken by eBPF at oom:mark_victim) to the first answer that holds it,
both on this machine's clock.

    .venv/bin/python bench/capture.py [--kills 60] [--cgroups 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from pxo.common import arrowipc
from pxo.common.addr import read_addr_file
from pxo.common.timeutil import utc_now
from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.oomdrill import start_allocator
from pxo.v1 import pxo_pb2, pxo_pb2_grpc


def start_edge(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = open(data / "edge.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pxo.edge", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                             "--node", "bench"], stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        addr = read_addr_file(data / "edge.addr")
        if addr:
            return proc, addr
        if proc.poll() is not None:
            raise SystemExit(f"the edge exited: {(data / 'edge.log').read_text()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit("the edge did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--cgroups", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark loads eBPF programs and causes OOM kills")

    data = Path(tempfile.mkdtemp(prefix="pxo-bench-capture-"))
    edge, addr = start_edge(data)
    channel = grpc.insecure_channel(addr)
    stub = pxo_pb2_grpc.EdgeStub(channel)

    def row_time(pid: int) -> dt.datetime | None:
        msgs = stub.Execute(pxo_pb2.Fragment(sql=f"SELECT time FROM oom_events WHERE pid = {pid}"), timeout=10)
        rows = [r for m in msgs for b in arrowipc.decode(m.ipc_stream)[1] for r in b.to_pylist()]
        return rows[0]["time"] if rows else None

    delays: list[float] = []
    missing: list[int] = []
    counted = 0
    try:
        cgs = [ScratchCgroup(32 << 20, prefix="pxo-bench") for _ in range(args.cgroups)]
        for cg in cgs:
            cg.__enter__()
        try:
            for i in range(args.kills):
                cg = cgs[i % len(cgs)]
                p = start_allocator(cg, 128)
                p.wait(timeout=60)
                if p.returncode != -signal.SIGKILL:
                    raise SystemExit(f"allocator {p.pid} was not OOM-killed ({p.returncode})")
                end = time.monotonic() + 5
                seen = None
                while seen is None and time.monotonic() < end:
                    seen = row_time(p.pid)
                    if seen is None:
                        time.sleep(0.005)
                if seen is None:
                    missing.append(p.pid)
                else:
                    delays.append((utc_now() - seen).total_seconds())
            counted = sum(cg.oom_kills() for cg in cgs)
        finally:
            for cg in cgs:
                cg.__exit__(None, None, None)
    finally:
        channel.close()
        edge.send_signal(signal.SIGTERM)
        edge.wait(timeout=30)

    captured = len(delays)
    q = statistics.quantiles(delays, n=100) if len(delays) >= 2 else delays * 99
    print(f"kills caused: {args.kills} in {args.cgroups} cgroups; the kernel counted {counted}")
    print(f"captured: {captured}/{counted} = {captured / counted:.1%} (goal 100%)  missing pids: {missing or 'none'}")
    print(f"kill -> queryable: p50 {statistics.median(delays) * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms (goal p99 < 1000 ms; includes the 5 ms polling step)")
    return 0 if captured == counted == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
