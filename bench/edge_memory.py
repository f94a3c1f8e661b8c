"""Edge memory benchmark: the resident memory of a real edge with every source on,
under a workload that exercises them all, against the goal (200 MiB; Pixie's
node agent is given 2 GiB).

The workload, for --seconds: a page-fault-heavy allocator (alloc_rate), short
processes started and ended continuously (process_exits), a user-space SIGKILL
now and then (kill_events), and an OOM kill every few seconds in a
memory-limited cgroup beneath this script's own cgroup (oom_events,
oom_candidates, reclaim_stalls). The edge's VmRSS is sampled every second.

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

from pxo.common.addr import read_addr_file
from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.oomdrill import start_allocator

GOAL_MIB = 200


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the edge loads eBPF programs")
    data = Path(tempfile.mkdtemp(prefix="pxo-bench-mem-"))
    log = open(data / "edge.log", "wb")  # noqa: SIM115
    edge = subprocess.Popen([sys.executable, "-m", "pxo.edge", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
                            stdout=log, stderr=subprocess.STDOUT)
    while read_addr_file(data / "edge.addr") is None:
        if edge.poll() is not None:
            raise SystemExit((data / "edge.log").read_text()[-2000:])
        time.sleep(0.05)
    start_rss = status_kib(edge.pid, "VmRSS")
    stop = threading.Event()
    counts = {"processes": 0, "kills": 0, "ooms": 0}
    worker = threading.Thread(target=workload, args=(stop, counts))
    worker.start()
    samples = []
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            time.sleep(1)
            samples.append(status_kib(edge.pid, "VmRSS"))
    finally:
        stop.set()
        worker.join()
        peak = status_kib(edge.pid, "VmHWM")
        anon, file = status_kib(edge.pid, "RssAnon"), status_kib(edge.pid, "RssFile")
        edge.send_signal(signal.SIGTERM)
        edge.wait(timeout=30)
    steady = statistics.median(samples[len(samples) // 2:])
    store = sum(f.stat().st_size for f in data.glob("edge.duckdb*"))
    print(f"workload over {args.seconds:.0f} s: {counts['processes']} processes, {counts['kills']} user kills, "
          f"{counts['ooms']} OOM kills")
    print(f"edge RSS: at start {start_rss / 1024:.0f} MiB, steady (median of the second half) "
          f"{steady / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB; goal <= {GOAL_MIB} MiB "
          f"-> {steady / 1024 / GOAL_MIB:.2f} of the goal")
    print(f"at the end: private (RssAnon) {anon / 1024:.0f} MiB, file-backed (shared library code) "
          f"{file / 1024:.0f} MiB")
    print(f"store on disk after the run: {store / 1024 / 1024:.1f} MiB")
    return 0 if peak / 1024 <= GOAL_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
