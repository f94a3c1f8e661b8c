"""`pxo deploy --local`: collector, edge and cloud as background processes on
loopback, sharing one data directory; `pxo delete --local` stops them and
removes the edge's eBPF programs, which stay pinned in bpffs while the edge
restarts (the edge's loader unpins them: the CLI imports no edge code).

Each component runs under a supervisor of its own (common/supervise.py): one that
crashes after it served is started again, on the same address, after a pause that
grows with crashes in a row (1 s to 60 s), as a kubelet restarts a pod's container.
The pid files name the supervisors; a component ends with its supervisor.

    <data_dir>/collector/   collector.addr
    <data_dir>/edge/        edge.duckdb, edge.addr
    <data_dir>/cloud/       cloud.sqlite, cloud.addr
    <data_dir>/logs/        one log per component
    <data_dir>/tls/         the cluster CA and one certificate and key per component (0600,
                            the directory 0700), made anew on every deploy
    <data_dir>/<name>.pid   one pid file per component
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pxo.cli.api import Api
from pxo.cli.config import Config
from pxo.cli.errors import CliError
from pxo.common.spawn import Component, ComponentFailed

if TYPE_CHECKING:
    from pxo.common.tls import TlsFiles

COMPONENTS = ("collector", "edge", "cloud")  # start order; stopped in reverse


@dataclass
class LocalPorts:
    collector: int = 50700
    edge: int = 50701
    cloud: int = 8700


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` runs and is one of ours (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pxo." in cmdline


class LocalDeployment:
    def __init__(self, data_dir: Path, *, python: str = sys.executable,
                 say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> None:
        self.dir = data_dir
        self.python = python
        self.say = say

    def pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def running(self) -> dict[str, int]:
        found = {}
        for name in COMPONENTS:
            try:
                pid = int(self.pid_file(name).read_text())
            except (OSError, ValueError):
                continue
            if _pid_alive(pid):
                found[name] = pid
        return found

    # -- start -----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Component:
        c = Component(name, args, addr_file=self.dir / name / f"{name}.addr", log_path=self.log_file(name),
                      env=env, python=self.python, new_session=True, supervised=True)
        self.pid_file(name).write_text(f"{c.pid}\n")
        return c

    def _wait_addr(self, name: str, c: Component, timeout: float) -> str:
        try:
            return c.wait_addr(timeout)
        except ComponentFailed as exc:
            raise CliError(str(exc), detail=f"log: {exc.log}") from None

    def deploy(self, cfg: Config, *, ports: LocalPorts, node: str = "", timeout: float = 60.0) -> Config:
        if self.running():
            self.say("pxo is already running locally; restarting it")
            self.delete(unpin=False)  # the new edge adopts the programs when they are still the ones it loads
        self.dir.mkdir(parents=True, exist_ok=True)
        node = node or socket.gethostname()
        started: list[str] = []
        # A fresh cluster token each deploy, handed to the collector and the cloud in their
        # environment (not on the command line, where any local user could read it in ps).
        token = secrets.token_urlsafe(32)
        # A fresh cluster CA each deploy too (rotation is re-deploying): every gRPC hop is mutual TLS.
        tls = self._make_tls()

        def tls_args(role: str) -> list[str]:
            f = tls[role]
            return ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]

        try:
            self.say("starting collector ...")
            collector = self._wait_addr("collector", self._spawn("collector", [
                "--listen", f"127.0.0.1:{ports.collector}", "--data-dir", str(self.dir / "collector"),
                *tls_args("collector"),
            ], env={"PXO_COLLECTOR_CLUSTER_TOKEN": token}), timeout)
            started.append("collector")
            self.say(f"  collector listening on {collector}")

            self.say("starting edge (compiling and loading eBPF programs) ...")
            edge = self._wait_addr("edge", self._spawn("edge", [
                "--listen", f"127.0.0.1:{ports.edge}", "--data-dir", str(self.dir / "edge"),
                "--collector", collector, "--node", node, *tls_args("edge"),
            ]), timeout)
            started.append("edge")
            self.say(f"  edge for node {node} listening on {edge}")

            self.say("starting cloud API ...")
            cloud_dir = self.dir / "cloud"
            cloud_dir.mkdir(parents=True, exist_ok=True)
            url = self._wait_addr("cloud", self._spawn("cloud", [
                "serve", "--data-dir", str(cloud_dir), "--host", "127.0.0.1",
                "--port", str(ports.cloud), "--collector", collector, *tls_args("cloud"),
            ], env={"PXO_CLOUD_CLUSTER_TOKEN": token}), timeout)
            started.append("cloud")
            self.say(f"  cloud API on {url}")

            key = cfg.api_key if cfg.api_url == url and cfg.api_key else ""
            if not key or not key_works(url, key):
                key = self._bootstrap_key(cloud_dir)
            wait_node_live(Api(url, key), node, timeout, say=self.say, logs=str(self.dir / "logs"))
        except BaseException:
            self.delete(quiet=True)
            raise
        return Config(api_url=url, api_key=key, local_data_dir=str(self.dir),
                      containers_data_dir=cfg.containers_data_dir)

    def _make_tls(self) -> dict[str, TlsFiles]:
        from pxo.common.tls import generate_cluster

        self.say("creating the cluster CA and certificates ...")
        try:
            return generate_cluster(self.dir / "tls")
        except OSError as exc:
            raise CliError(f"cannot write the TLS certificates to {self.dir / 'tls'}: {exc.strerror}") from None

    def _bootstrap_key(self, cloud_dir: Path) -> str:
        out = subprocess.run([self.python, "-m", "pxo.cloud", "bootstrap", "--data-dir", str(cloud_dir)],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if out.returncode != 0 or not out.stdout.strip():
            raise CliError(f"cannot create the admin API key: {out.stderr.strip() or 'no output'}")
        return out.stdout.strip()

    # -- stop ------------------------------------------------------------------

    def delete(self, *, quiet: bool = False, timeout: float = 10.0, unpin: bool = True) -> list[str]:
        """Stop the components; ``unpin``: then remove the eBPF programs the edge left pinned."""
        stopped = []
        running = self.running()
        for name in reversed(COMPONENTS):
            pid = running.get(name)
            if pid is not None:
                if not quiet:
                    self.say(f"stopping {name} (pid {pid}) ...")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                end = time.monotonic() + timeout
                while _pid_alive(pid) and time.monotonic() < end:
                    time.sleep(0.05)
                if _pid_alive(pid):  # the supervisor and its component: one process group, its own session
                    with contextlib.suppress(ProcessLookupError):
                        if os.getpgid(pid) == pid:
                            os.killpg(pid, signal.SIGKILL)
                        else:
                            os.kill(pid, signal.SIGKILL)
                stopped.append(name)
            self.pid_file(name).unlink(missing_ok=True)
        if unpin:
            self.unpin(quiet=quiet)
        return stopped

    def unpin(self, *, quiet: bool = False) -> None:
        unpin_programs(self.python, say=self.say, quiet=quiet)


def unpin_programs(python: str, *, say: Callable[[str], None], quiet: bool = False) -> None:
    """Remove the edge's pinned eBPF programs (/sys/fs/bpf/pxo) with the edge's own loader
    (``python -m pxo.edge.loader unpin``): they stop capturing."""
    out = subprocess.run([python, "-m", "pxo.edge.loader", "unpin"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, check=False)
    if out.returncode != 0:
        say(f"could not remove the edge's eBPF programs: {out.stderr.strip().splitlines()[-1:]}")
    elif out.stdout.strip() and not quiet:
        say(f"eBPF programs: {out.stdout.strip()}")


def key_works(url: str, key: str) -> bool:
    """Does the cloud at ``url`` still accept ``key``?"""
    req = urllib.request.Request(url + "/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(json.loads(resp.read()).get("role"))
    except OSError:
        return False


def wait_node_live(api: Api, node: str, timeout: float, *, say: Callable[[str], None], logs: str) -> None:
    """Until the edge on ``node`` has registered with the collector (as the cloud sees it);
    warns about each source that runs degraded or failed."""
    say(f"waiting for the edge on {node} to register ...")
    end = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < end:
        try:
            nodes = api.call("GET", "/api/v1/nodes")["nodes"]
            last = f"nodes known: {', '.join(n['node'] + ' ' + n['state'] for n in nodes) or 'none'}"
        except CliError as exc:
            nodes, last = [], exc.message
        ours = [n for n in nodes if n["node"] == node and n["state"] == "live"]
        if ours:
            say(f"  node {node} is live")
            for src in ours[0]["sources"]:
                if src["state"] in ("degraded", "failed"):
                    say(f"  warning: {src['name']} is {src['state']}: {src['detail']}")
            return
        time.sleep(0.2)
    raise CliError(f"the edge on {node} did not register with the collector within {timeout:g} s ({last})",
                   detail=f"logs: {logs}")
