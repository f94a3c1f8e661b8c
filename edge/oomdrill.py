"""A real, contained OOM kill: the way to check end to end that pxo sees one.

A child process joins a throw-away memory-limited cgroup beneath the caller's
own cgroup and allocates a bounded amount (a few times the limit, never "until
it dies"); the kernel's OOM killer kills it; the cgroup is removed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass

from pxo.edge.cgroups import CgroupError, ScratchCgroup

DRILL_COMM = "pxo-oom-drill"

# Runs in the child: join the cgroup, name itself, touch memory page by page.
_ALLOCATOR = r"""
import ctypes, os, sys
procs, total_mib, comm = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm), 0, 0, 0)  # PR_SET_NAME
with open(procs, "w") as f:
    f.write(str(os.getpid()))
sys.stdout.write("joined\n"); sys.stdout.flush()
held = []
for _ in range(total_mib):
    held.append(b"\x01" * (1 << 20))  # written, so every page is resident
sys.exit(3)  # still alive: the limit did not hold
"""


@dataclass(frozen=True)
class DrillResult:
    pid: int
    comm: str
    cgroup_path: str  # as the kernel names it, within the memory hierarchy
    killed: bool  # died of SIGKILL
    oom_kills: int  # the cgroup's own oom_kill counter


def start_allocator(cg: ScratchCgroup, allocate_mib: int, *, comm: str = DRILL_COMM,
                    python: str = sys.executable) -> subprocess.Popen[bytes]:
    """A process that joins ``cg`` and then allocates ``allocate_mib`` MiB (bounded:
    at most 8 times the cgroup's limit). Returns once it has joined."""
    if allocate_mib << 20 > 8 * cg.limit_bytes:
        raise CgroupError("an allocator allocates at most 8 times its cgroup's limit")
    child = subprocess.Popen(
        [python, "-c", _ALLOCATOR, str(cg.procs_file), str(allocate_mib), comm],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert child.stdout is not None
    child.stdout.readline()  # "joined" (or EOF if it died first)
    return child


def run_drill(*, limit_mib: int = 64, allocate_mib: int = 256,
              python: str = sys.executable) -> DrillResult:
    """Cause exactly one OOM kill; returns what the kernel did."""
    cg = ScratchCgroup(limit_mib << 20, prefix="pxo-oom-drill")
    with cg:
        child = start_allocator(cg, allocate_mib, python=python)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise CgroupError("the drill's allocator neither finished nor was killed in 60 s") from None
        result = DrillResult(
            pid=child.pid,
            comm=DRILL_COMM,
            cgroup_path=cg.path,
            killed=child.returncode == -signal.SIGKILL,
            oom_kills=cg.oom_kills(),
        )
    return result
