"""bpf/reclaim.bpf.c loaded into this kernel, against real memory cgroup reclaim.

A child in a scratch memory-limited cgroup reads a file four times the limit
through the page cache: every page it reads is charged to its cgroup, so the
kernel must reclaim (clean page cache, no OOM kill) again and again to stay
under the limit. Other tests run on this machine at the same time: only rows
of our own cgroup are looked at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import IO

import pytest

from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.reclaim import PAGE_SIZE, ReclaimBpfSource, pair_arguments
from tests.helpers.sink import ListSink

pytestmark = pytest.mark.requires_bpf

MIB = 1 << 20
LIMIT = 32 * MIB
FILE_SIZE = 4 * LIMIT
CHILD_COMM = "pxo-reclaim-tst"

# Runs in the child: name itself, join the cgroup, read the file through the page cache.
_READER = r"""
import ctypes, os, sys
procs, path, comm = sys.argv[1], sys.argv[2], sys.argv[3].encode()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm), 0, 0, 0)  # PR_SET_NAME
with open(procs, "w") as f:
    f.write(str(os.getpid()))
with open(path, "rb", buffering=0) as f:
    while f.read(1 << 20):
        pass
"""


def uncached_file(directory: str, size: int) -> IO[bytes]:
    """A file on disk (not tmpfs: its pages are reclaimable) with none of its pages in the page cache.

    Written by this process, its cached pages would be charged to this
    process's cgroup, not the child's: they are written back and dropped.
    """
    f = tempfile.NamedTemporaryFile(dir=directory, prefix="pxo-reclaim-")  # noqa: SIM115
    chunk = os.urandom(MIB)
    for _ in range(size // MIB):
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return f


def test_memcg_reclaim_in_a_limited_cgroup_is_timed_and_attributed() -> None:
    sink = ListSink()
    src = ReclaimBpfSource(SourceContext(sink=sink))
    src.start()
    try:
        assert "memcg" in src.kinds
        with uncached_file("/var/tmp", FILE_SIZE) as data, ScratchCgroup(LIMIT, prefix="pxo-reclaim-test") as cg:
            child = subprocess.Popen([sys.executable, "-c", _READER, str(cg.procs_file), data.name, CHILD_COMM])
            assert child.wait(timeout=120) == 0
            time.sleep(0.5)  # the ring buffer is read continuously; let the source catch up
    finally:
        src.stop()

    ours = [r for t, r in sink.rows if t == "reclaim_stalls" and r["cgroup_path"] == cg.path]
    memcg = [r for r in ours if r["kind"] == "memcg"]
    assert memcg, sink.rows[-5:]
    for r in memcg:
        assert r["pid"] == child.pid and r["tid"] == child.pid
        assert r["comm"] == CHILD_COMM
        assert r["cgroup_id"]
        assert r["duration_ns"] > 0
        assert r["reclaimed_bytes"] == r["nr_reclaimed_pages"] * PAGE_SIZE
        assert r["order"] >= 0
    # The cgroup was charged the whole file and ended under its limit, so
    # reclaim freed about FILE_SIZE - LIMIT. Half of it is asked for: global
    # reclaim by other tasks may also have taken some of the child's pages.
    assert sum(r["reclaimed_bytes"] for r in memcg) >= (FILE_SIZE - LIMIT) // 2
    assert src.status.state == "stopped" and src.status.lost == 0


@pytest.mark.parametrize(("begin", "end", "where"), [
    # Debian 5.10, 6.1, 6.12 (and this 6.18): (int order, gfp_t gfp_flags) / (unsigned long nr_reclaimed)
    (("int", "gfp_t"), ("long unsigned int",), {"ORDER": 0, "GFP": 1, "NR": 0}),
    # node reclaim everywhere: (int nid, int order, gfp_t gfp_flags)
    (("int", "int", "gfp_t"), ("long unsigned int",), {"ORDER": 1, "GFP": 2, "NR": 0}),
    # Debian 7.2: (gfp_t gfp_flags, int order, struct mem_cgroup *) / (unsigned long, struct mem_cgroup *)
    (("gfp_t", "int", "struct mem_cgroup *"), ("long unsigned int", "struct mem_cgroup *"),
     {"ORDER": 1, "GFP": 0, "NR": 0}),
    (None, ("long unsigned int",), None),
])
def test_where_each_kernel_passes_the_arguments(begin: tuple[str, ...] | None, end: tuple[str, ...],
                                                where: dict[str, int] | None) -> None:
    """What the kernels of the matrix declare (their btf_trace_* typedefs, read in each guest)."""
    assert pair_arguments(begin, end) == where


def test_arguments_pxo_cannot_place_are_refused() -> None:
    with pytest.raises(ValueError, match="no \\(order, gfp_flags\\)"):
        pair_arguments(("gfp_t", "struct page *"), ("long unsigned int",))
