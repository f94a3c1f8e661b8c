"""CLI cold-start benchmark: how long `pxo --help` (and `pxo version`, and
`pxo completion bash`) take from exec to exit, next to `python -c pass` measured
side by side.

Runs are interleaved (baseline, pxo, baseline, pxo, ...) so drift in machine
load hits both alike; each is a fresh interpreter, the way a shell runs `pxo`.
The goal is a median under 300 ms for `pxo --help`.

    .venv/bin/python bench/cli_startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The installed console script, as a user runs it (falls back to -m when not installed).
_PXO = Path(sys.executable).parent / "pxo"
PXO = [str(_PXO)] if _PXO.exists() else [sys.executable, "-m", "pxo.cli.main"]

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "pxo --help": [*PXO, "--help"],
    "pxo query --help": [*PXO, "query", "--help"],
    "pxo version": [*PXO, "version"],
    "pxo completion bash": [*PXO, "completion", "bash"],
}
GOAL_MS = 300.0


def once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "0"})
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="runs of each command (after one warm-up each)")
    args = ap.parse_args()
    for cmd in COMMANDS.values():  # warm the page cache and the .pyc files: a cold start, not a cold disk
        once(cmd)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            times[name].append(once(cmd))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<22} {'median ms':>9} {'p90 ms':>7} {'min ms':>7} {'x python':>9}"
          f"  ({args.runs} interleaved runs)")
    for name, t in times.items():
        t.sort()
        med = statistics.median(t)
        p90 = t[min(len(t) - 1, int(len(t) * 0.9))]
        print(f"{name:<22} {med:9.1f} {p90:7.1f} {t[0]:7.1f} {med / base:9.2f}")
    help_ms = statistics.median(times["pxo --help"])
    verdict = "met" if help_ms < GOAL_MS else "MISSED"
    print(f"goal: pxo --help under {GOAL_MS:.0f} ms: {verdict} ({help_ms:.1f} ms; "
          f"{help_ms - base:.1f} ms over the bare interpreter)")
    return 0 if help_ms < GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
