"""One way to start a pxo component as a process and wait until it serves: the CLI's
local deployment and the test suite's real services both use it.

A component (``python -m pxo.<name> ARGS``) writes the address it bound to
``<name>.addr`` once it serves (common/addr.py); its output goes to a log file.
``wait_addr`` returns that address, or raises ``ComponentFailed`` naming the
component and the last error line of its log when it exits or takes too long.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pxo.common.addr import read_addr_file


class ComponentFailed(Exception):
    """A component exited at start or did not serve in time; ``name`` and ``log`` say which and where."""

    def __init__(self, name: str, message: str, log: Path) -> None:
        super().__init__(message)
        self.name = name
        self.log = log


class Component:
    def __init__(self, name: str, args: Sequence[str], *, addr_file: Path, log_path: Path,
                 env: Mapping[str, str] | None = None, python: str = sys.executable,
                 new_session: bool = False, supervised: bool = False) -> None:
        """Start it. ``new_session``: outlive the caller's terminal (a deployment, not a test).
        ``supervised``: under common/supervise.py, which starts it again when it crashes after
        it served; ``pid`` is then the supervisor's, and the component ends with it."""
        self.name = name
        self.addr_file = addr_file
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        addr_file.parent.mkdir(parents=True, exist_ok=True)
        addr_file.unlink(missing_ok=True)  # a restarted component must not be found at its old address
        command = [python, "-m", f"pxo.{name}", *args]
        if supervised:
            command = [python, "-m", "pxo.common.supervise", "--name", name, "--addr-file", str(addr_file), "--",
                       *command]
        with open(log_path, "ab") as log:  # appended: restarts keep earlier logs
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session,
                                         env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_addr(self, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise ComponentFailed(self.name, f"the {self.name} exited at start (status {self.proc.returncode}): "
                                      f"{self.last_error()}", self.log_path)
            addr = read_addr_file(self.addr_file)
            if addr:
                return addr
            time.sleep(0.05)
        raise ComponentFailed(self.name, f"the {self.name} did not start serving within {timeout:g} s: "
                              f"{self.last_error()}", self.log_path)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def last_error(self) -> str:
        """The last line of the log that says "error", else its last line."""
        lines = [ln for ln in self.log().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return (errors or lines or ["(empty log)"])[-1].strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal it and wait (SIGKILL after ``timeout``); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
