"""Workloads with a known memory story, for `pxo explain` and the early warning: each runs
in a memory-limited cgroup beneath the test process's own, is bounded (it stops by
itself a few times past its limit), and is one Python process whose history the test
knows exactly.

    leak     anonymous memory grows at a steady rate until the kernel kills it
    spike    flat and small for a while, then one large allocation
    plateau  holds most of its limit for a while, then a small allocation tips it over
    shm      writes a file to /dev/shm (tmpfs: charged to the cgroup, not reclaimable
             without swap), then a little anonymous memory
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from pxo.edge.cgroups import ScratchCgroup
from tests.helpers.cli import pxo
from tests.helpers.oom import wait_rows
from tests.helpers.seeding import wait_nodes
from tests.helpers.services import Service, bootstrap, start_cloud, start_collector, start_edge
from tests.helpers.workloads import ChildCgroup

MiB = 1 << 20

_PRELUDE = """
import os, sys, time
MiB = 1 << 20
held = []
def grab(mib):
    held.append(bytearray(b"\\x01") * (mib * MiB))  # filled: every page touched
"""

SCRIPTS = {
    # rate MiB/s, for at most `top` MiB (bounded: a few times the limit)
    "leak": """
rate, top = float(sys.argv[1]), int(sys.argv[2])
start = time.monotonic()
for i in range(top):
    grab(1)
    time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
""",
    # flat for `wait` s, then `big` MiB at once
    "spike": """
wait, big = float(sys.argv[1]), int(sys.argv[2])
time.sleep(wait)
grab(big)
time.sleep(30)
""",
    # `hold` MiB for `wait` s, then `more` MiB
    "plateau": """
hold, wait, more = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
grab(hold)
time.sleep(wait)
grab(more)
time.sleep(30)
""",
    # `shm` MiB into a /dev/shm file, `wait` s, then anonymous memory 1 MiB every 50 ms up to `top`
    "shm": """
path, shm, wait, top = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
with open(path, "wb") as f:
    for _ in range(shm):
        f.write(b"\\x02" * MiB)
time.sleep(wait)
for _ in range(top):
    grab(1)
    time.sleep(0.05)
""",
}


class Story:
    """One such workload, started in ``cg`` (a ScratchCgroup or a ChildCgroup)."""

    def __init__(self, cg: ScratchCgroup | ChildCgroup, kind: str, *args: object) -> None:
        self.cg = cg
        self.kind = kind
        self.shm_path: Path | None = None
        argv = [str(a) for a in args]
        if kind == "shm":
            self.shm_path = Path("/dev/shm") / f"pxo-test-{uuid.uuid4().hex[:8]}"
            argv = [str(self.shm_path), *argv]
        code = textwrap.dedent(_PRELUDE) + textwrap.dedent(SCRIPTS[kind])
        procs = str(cg.dir / "cgroup.procs")

        def join() -> None:  # in the child, before exec: every byte it allocates is the cgroup's
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        self.proc = subprocess.Popen([sys.executable, "-c", code, *argv], preexec_fn=join,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 120) -> int:
        """Its exit status (-9: killed)."""
        return self.proc.wait(timeout)

    def __enter__(self) -> Story:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.shm_path is not None:
            self.shm_path.unlink(missing_ok=True)


SOURCES = '["oom", "kill_bpf", "cgroupfs", "risk", "procfs", "reclaim_bpf", "probe_status"]'


class RealCluster:
    """A real collector, one edge with the sources `pxo explain` reads, and the cloud, on loopback;
    ``explain`` runs the CLI as a user does."""

    def __init__(self, root: Path, *collector_args: str, edge_env: dict[str, str] | None = None) -> None:
        self.services: list[Service] = []
        _, self.collector = start_collector(self.services, root / "collector", "--heartbeat-interval", "0.5",
                                            *collector_args)
        _, self.edge = start_edge(self.services, root / "edge", self.collector, "node-x", "--sources", SOURCES,
                                  "--metrics", "127.0.0.1:0", env=edge_env)
        self.metrics_url = f"http://{(root / 'edge' / 'metrics.addr').read_text().strip()}/metrics"
        wait_nodes(self.collector, 1)
        _, self.url = start_cloud(self.services, root / "cloud", self.collector)
        self.key = bootstrap(root / "cloud")
        self.env = {"PXO_API_URL": self.url, "PXO_API_KEY": self.key, "NO_COLOR": "1", "COLUMNS": "100"}

    def __enter__(self) -> RealCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        for s in reversed(self.services):
            s.stop()

    def explain(self, target: str, *extra: str) -> dict[str, Any]:
        r = pxo("explain", target, "-o", "json", *extra, env=self.env, timeout=60)
        assert r.returncode == 0, r.stderr
        body: dict[str, Any] = json.loads(r.stdout)
        return body

    def rules(self, target: str, *extra: str) -> list[str]:
        return [v["rule"] for v in self.explain(target, *extra)["verdicts"]]

    def wait_kill(self, cgroup: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait_kill_where(f"cgroup_path LIKE '{cgroup}%'", timeout)

    def wait_kill_where(self, condition: str, timeout: float = 30) -> dict[str, Any]:
        rows = wait_rows(self.edge, f"SELECT * FROM oom_events WHERE {condition}", 1, timeout=timeout)
        return rows[0]


class Webhook:
    """A loopback HTTP receiver that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self, cgroup: str, status: str) -> list[dict[str, Any]]:
        return [a for b in list(self.bodies) for a in b["alerts"]
                if a["labels"].get("cgroup_path") == cgroup and a["status"] == status]
