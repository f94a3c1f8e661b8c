"""The pxo CLI as a user runs it: a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

PXO = [sys.executable, "-m", "pxo.cli.main"]


def pxo(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``pxo ARGS`` with this environment plus ``env``; ``stdin`` is its input."""
    return subprocess.run([*PXO, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
