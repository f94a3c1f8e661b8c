"""Keep one component running: `pxo deploy --local` starts each of its components under
one of these, as a kubelet (restartPolicy Always) or podman (``--restart always``,
cli/containers.py) keeps theirs.

    python -m pxo.common.supervise --name edge --addr-file DIR/edge.addr -- python -m pxo.edge ARGS

- The component's output and ours go to our stdout (the component's log); our lines
  say ``pxo-supervise``.
- A component that exits before it ever served (its address file never appeared) is not
  started again: we exit with its status, so whoever started us sees its own error at once
  (a port in use, a bad flag).
- One that served and then ends abnormally (a signal, a non-zero status) is started again
  after a pause that grows with crashes in a row (``RESTART_DELAYS``), the count starting
  over once it has run ``HEALTHY_AFTER`` seconds. It is started on the address it bound
  the first time (a port 0 it was given becomes that port), where the others know it.
- A status of 0 is the component's own decision to stop: we exit 0.
- SIGTERM or SIGINT is passed on; we wait for the component and exit with its status.
- The component gets SIGTERM when we die (``PR_SET_PDEATHSIG``): none outlives its
  supervisor, so a pid file naming the supervisor names the whole component.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pxo.common.addr import read_addr_file
from pxo.common.backoff import RESTART_DELAYS

log = logging.getLogger("pxo-supervise")

HEALTHY_AFTER = 60.0  # seconds a component runs before its crashes count from zero again
_PR_SET_PDEATHSIG = 1


def same_address(args: Sequence[str], addr: str) -> list[str]:
    """``args`` with a port 0 (``--listen HOST:0``, ``--port 0``) replaced by the port of
    ``addr``, the address the component wrote once it served (``HOST:PORT`` or a URL)."""
    m = re.search(r":(\d+)/*$", addr)
    if m is None:
        return list(args)
    port = m.group(1)
    out = list(args)
    for i, a in enumerate(out):
        prev = out[i - 1] if i else ""
        if (prev == "--listen" or a.startswith("--listen=")) and a.endswith(":0"):
            out[i] = a[:-1] + port
        elif prev == "--port" and a == "0":
            out[i] = port
        elif a == "--port=0":
            out[i] = "--port=" + port
    return out


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (and if it died already, go)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _status(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # a shell's convention for a signal


class Supervisor:
    def __init__(self, name: str, command: Sequence[str], addr_file: Path) -> None:
        self.name = name
        self.command = list(command)
        self.addr_file = addr_file
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts = 0

    def on_signal(self, signum: int, _frame: FrameType | None = None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def _start(self) -> subprocess.Popen[bytes]:
        self.addr_file.unlink(missing_ok=True)  # only what this one writes says it serves
        parent = os.getpid()
        return subprocess.Popen(self.command, stdin=subprocess.DEVNULL, preexec_fn=lambda: _die_with_parent(parent))

    def _wait(self, child: subprocess.Popen[bytes]) -> tuple[int, str | None]:
        """Until ``child`` ends: its status, and the address it served on (None if it never did)."""
        addr = None
        while addr is None:
            try:
                rc = child.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                addr = read_addr_file(self.addr_file)
            else:  # it may have served and ended between two looks: its file says so
                return rc, read_addr_file(self.addr_file)
        return child.wait(), addr

    def run(self) -> int:
        served: str | None = None  # the address it bound first
        crashes = 0
        while True:
            started = time.monotonic()
            self.child = self._start()
            if self.stopping:  # a signal while it was being started
                self.child.send_signal(signal.SIGTERM)
            log.info("started %s (pid %d)%s", self.name, self.child.pid,
                     f", restart {self.restarts}" if self.restarts else "")
            rc, addr = self._wait(self.child)
            self.addr_file.unlink(missing_ok=True)  # not found at an address nothing serves on
            if served is None and addr is not None:
                served = addr
                self.command = same_address(self.command, addr)
            ran = time.monotonic() - started
            if self.stopping or rc == 0:
                log.info("%s ended (%s)", self.name, _status(rc))
                return _exit_code(rc)
            if served is None:
                log.error("%s exited before it served (%s): not starting it again", self.name, _status(rc))
                return _exit_code(rc)
            if ran >= HEALTHY_AFTER:
                crashes = 0
            delay = RESTART_DELAYS[min(crashes, len(RESTART_DELAYS) - 1)]
            crashes += 1
            self.restarts += 1
            log.warning("%s ended after %.1f s (%s); starting it again in %g s", self.name, ran, _status(rc), delay)
            if self._pause(delay):
                log.info("stopped while %s was down", self.name)
                return 0

    def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless told to stop meanwhile; True when told."""
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        return self.stopping


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pxo.common.supervise",
                                 description="run a pxo component and start it again when it crashes")
    ap.add_argument("--name", required=True, help="the component, for the log")
    ap.add_argument("--addr-file", required=True, type=Path, help="the file it writes its address to once it serves")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the component's command line")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command to run (after --)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    sup = Supervisor(args.name, command, args.addr_file)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, sup.on_signal)
    try:
        return sup.run()
    except OSError as exc:
        log.error("cannot start %s: %s", args.name, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
