"""The kernel matrix: tests/kernels/test_scenarios.py run in a fresh guest of each of
Debian's kernels (tests/helpers/guest.py), and docs/kernels.md written from what
each guest reported.

    python -m tests.helpers.matrix bookworm                 # one kernel, output streamed
    python -m tests.helpers.matrix --write docs/kernels.md bullseye bookworm trixie sid

scripts/kernel-matrix.sh fetches the kernels and runs all four.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.guest import SUITES, GuestError, run_in_guest

ROOT = Path(__file__).resolve().parents[2]
MARK = "@@pxo-matrix-report@@"
EBPF_SOURCES = ("oom", "kill_bpf", "exit_bpf", "alloc_faults", "alloc_bpf", "reclaim_bpf")
# Run in each guest after the scenarios: a source that fails is opened again (adopting its
# pinned program in the same process) and loses nothing, on every kernel.
GUEST_TESTS = ("tests/edge/test_source_restart.py",)
# The tables whose columns the scenarios exercise (process_memory and probe_status are not sampled there).
TABLES = ("oom_events", "oom_candidates", "kill_events", "process_exits", "alloc_rate", "reclaim_stalls",
          "container_memory")


@dataclass
class MatrixRun:
    suite: str
    release: str
    exit_code: int
    output: str  # pytest's, without the report
    report: dict[str, Any] | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def run_scenarios(suite: str, *, timeout: float = 1500, pytest_args: Sequence[str] = (),
                  on_output: Callable[[bytes], None] | None = None,
                  cancel: threading.Event | None = None) -> MatrixRun:
    """Boot ``suite``'s kernel as a fresh node and run the scenarios in it (as root, CI=true:
    a source that cannot load fails its scenarios instead of skipping them)."""
    script = (f"{ROOT}/.venv/bin/python -m pytest -p no:cacheprovider -q -rfE tests/kernels/test_scenarios.py "
              f"{' '.join(GUEST_TESTS)} "
              + " ".join(pytest_args) + f"; rc=$?; echo; echo {MARK}; cat /tmp/pxo-matrix.json; exit $rc")
    started = time.monotonic()
    # 1 GiB: enough for the loader's compiler, and small enough that the node-wide OOM scenario fills it fast
    result = run_in_guest(suite, ["sh", "-c", script], cwd=str(ROOT), timeout=timeout, on_output=on_output,
                          memory_mb=1024, cancel=cancel,
                          env={"PXO_GUEST": "1", "CI": "true", "PXO_MATRIX_REPORT": "/tmp/pxo-matrix.json",
                               "PYTHONDONTWRITEBYTECODE": "1"})
    out, _, raw = result.output.partition(MARK)
    try:
        report = json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError:
        report = None
    return MatrixRun(suite, result.release, result.exit_code, out, report, time.monotonic() - started)


class EarlyScenarios:
    """The suite's guests, started as soon as pytest has collected the tests rather than when
    tests/kernels/test_matrix.py's turn comes: under TCG a guest keeps one core busy for about
    five minutes, while the host's tests, which mostly wait on the kernel (OOM kills, samplers,
    servers), leave most of the second core idle. One guest at a time, in the order asked;
    ``result`` waits for one; ``cancel`` stops what still runs (a session that ends early)."""

    def __init__(self, suites: Sequence[str]) -> None:
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="early-guest")
        self._runs: dict[str, Future[MatrixRun]] = {
            s: self._pool.submit(run_scenarios, s, cancel=self._cancel) for s in dict.fromkeys(suites)}

    def result(self, suite: str) -> MatrixRun:
        return self._runs[suite].result()

    def cancel(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- docs/kernels.md -------------------------------------------------------------------


def render(runs: list[MatrixRun], *, peers: str = "") -> str:
    """docs/kernels.md from the runs (and the peers' section, when measured)."""
    lines = [
        "# Kernels",
        "",
        "What pxo's edge does on each of Debian's kernels, booted under qemu as a fresh node (cgroup v2",
        "only, tracefs not mounted, nothing but the host's read-only root shared in; see",
        "`tests/helpers/guest.py`), with `tests/kernels/test_scenarios.py` run inside: real OOM kills, a",
        "memory.oom.group kill of 3, a burst the kernel rate-limits, a parent-limit kill, a user SIGKILL,",
        "exit statuses, a known allocation, memcg reclaim and restart recovery, each checked against the",
        "kernel's own counters; then `tests/edge/test_source_restart.py` (a source that fails is opened",
        "again and loses nothing). The host (6.18, cgroup v1 memory) runs the same modules in the suite.",
        "",
        f"Written by `scripts/kernel-matrix.sh` on {dt.date.today().isoformat()}; `scripts/test.sh` runs the",
        "bookworm (6.1) guest every time.",
        "",
        "## Scenarios",
        "",
        "| kernel | passed | time |",
        "|---|---|---|",
    ]
    for r in runs:
        summary = r.output.strip().splitlines()[-1] if r.output.strip() else "no output"
        lines.append(f"| {r.suite} {r.release} | {'yes' if r.passed else 'NO'}: {summary} | {r.seconds:.0f} s |")
    lines += ["", "## Sources", "", "| source | " + " | ".join(r.suite for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    names = sorted({n for r in runs for n in (r.report or {}).get("sources", {})},
                   key=lambda n: (n not in EBPF_SOURCES, n))
    for n in names:
        cells = []
        for r in runs:
            s = (r.report or {}).get("sources", {}).get(n)
            cells.append("?" if s is None else s["state"] + (f" ({s['detail']})" if s["state"] != "running" else ""))
        lines.append(f"| `{n}` | " + " | ".join(cells) + " |")
    lines += ["", "## What each scenario saw", ""]
    for r in runs:
        scen = (r.report or {}).get("scenarios", {})
        seen = {k: ", ".join(f"{kk} {vv}" for kk, vv in v.items() if kk != "columns filled") for k, v in scen.items()}
        lines.append(f"- **{r.suite}** ({r.release}): " + "; ".join(f"{k}: {v}" for k, v in seen.items() if v))
    lines += ["", "## Columns filled", "",
              "A column is filled on a kernel when any row the scenarios produced there has it. Every",
              "table's columns are filled on every kernel, except:", ""]
    any_gap = False
    for table in TABLES:
        for r in runs:
            filled = set((r.report or {}).get("filled", {}).get(table, []))
            cols = _columns(table)
            missing = [c for c in cols if c not in filled]
            if missing:
                any_gap = True
                lines.append(f"- `{table}` on {r.suite}: " + ", ".join(f"`{c}`" for c in missing))
    if not any_gap:
        lines.append("- (none)")
    lines += ["", "Columns that are NULL by design in these scenarios: the attribution columns",
              "(`container_runtime` ... `container`) need a container runtime or Kubernetes; `events_low` and",
              "`events_high` need memory.low/high set; PSI fields need PSI; v1-only columns (`failcnt`,",
              "`under_oom`) are NULL on v2 guests."]
    if peers:
        lines += ["", peers.rstrip()]
    return "\n".join(lines) + "\n"


def _columns(table: str) -> list[str]:
    from pxo.edge.sources import all_tables

    return next(t.column_names for t in all_tables() if t.name == table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.helpers.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suites", nargs="*", default=["bookworm"], help=f"kernels: {', '.join(SUITES)}")
    ap.add_argument("--write", type=Path, help="write docs/kernels.md here")
    ap.add_argument("--peers", type=Path, help="a markdown section (bench/oom_peers.py) to append")
    ap.add_argument("--parallel", type=int, default=2, help="guests at once (each takes one core)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown kernel(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    stream = None if args.write or len(args.suites) > 1 else (
        lambda b: print(b.decode(errors="replace"), end="", flush=True))
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(_run_one, s, stream) for s in args.suites]
        runs = [f.result() for f in futures]
    for r in runs:
        print(f"{r.suite} {r.release}: exit {r.exit_code} in {r.seconds:.0f} s", file=sys.stderr)
        if not r.passed and stream is None:
            print(r.output, file=sys.stderr)
    if args.write:
        peers = args.peers.read_text() if args.peers and args.peers.exists() else ""
        args.write.write_text(render(runs, peers=peers))
    return 0 if all(r.passed for r in runs) else 1


def _run_one(suite: str, stream: Callable[[bytes], None] | None) -> MatrixRun:
    try:
        return run_scenarios(suite, on_output=stream)
    except GuestError as exc:
        return MatrixRun(suite, "?", 125, str(exc), None, 0.0)


if __name__ == "__main__":
    sys.exit(main())
