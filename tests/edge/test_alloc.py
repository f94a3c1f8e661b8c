"""bpf/alloc.bpf.c loaded into this kernel, against a child that allocates a known amount.

Other tests (OOM drills, allocators) run on this machine at the same time:
only rows of our own children's pids are looked at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.sources.alloc import PAGE_SIZE, AllocRateBpfSource
from pxo.edge.sources.base import SourceContext
from tests.helpers.sink import ListSink
from tests.helpers.workloads import CHILD_COMM, FAULTING_CHILD

pytestmark = pytest.mark.requires_bpf

MIB = 1 << 20
SIZE = 256 * MIB


def run_child(cg: ScratchCgroup, size: int) -> int:
    child = subprocess.Popen([sys.executable, "-c", FAULTING_CHILD, str(cg.procs_file), str(size), CHILD_COMM])
    assert child.wait(timeout=60) == 0
    return child.pid


def wait_drains(src: AllocRateBpfSource, n: int, timeout: float = 10.0) -> None:
    """Wait until n more intervals have been drained: the first may have begun before now, the next did not."""
    target = src.drains + n
    end = time.monotonic() + timeout
    while src.drains < target and time.monotonic() < end:
        time.sleep(0.02)
    assert src.drains >= target, "the source stopped draining"


# slots=1 puts every process but one per CPU and interval on the overflow
# hash, so both ways of counting are checked.
# array_batch=False reads the slots one by one, as kernels before 5.11 need.
@pytest.mark.parametrize(("slots", "array_batch"), [(512, True), (1, True), (512, False)])
def test_a_known_allocation_is_counted_for_its_process_and_memory_cgroup(slots: int, array_batch: bool) -> None:
    sink = ListSink()
    src = AllocRateBpfSource(SourceContext(sink=sink), interval=0.25, slots=slots, array_batch=array_batch)
    src.start()
    try:
        # A limit far above what the children use: the cgroup is there to be
        # attributed to, not to cause reclaim.
        with ScratchCgroup(1 << 30, prefix="pxo-alloc-test") as cg:
            # The same script allocating nothing measures what the interpreter
            # itself allocates (heap, page tables, copy-on-write pages, page
            # cache it reads): ~5 MiB, which would eat most of 5% of 256 MiB
            # if it were not subtracted. Run twice, the second with the page
            # cache as warm as the measured run will find it.
            run_child(cg, 0)
            baseline_pid = run_child(cg, 0)
            measured_pid = run_child(cg, SIZE)
            cgroup_id = os.stat(cg.dir).st_ino
            wait_drains(src, 2)
    finally:
        src.stop()

    rows = [r for t, r in sink.rows if t == "alloc_rate"]
    base = [r for r in rows if r["pid"] == baseline_pid]
    ours = [r for r in rows if r["pid"] == measured_pid]
    assert base and ours, rows
    baseline = sum(r["alloc_bytes"] for r in base)
    measured = sum(r["alloc_bytes"] for r in ours)
    assert baseline < 64 * MIB  # an interpreter, not a leak in the accounting
    assert abs(measured - baseline - SIZE) <= 0.05 * SIZE, (measured, baseline)

    # Its pages are charged to the memory cgroup it was in when it allocated:
    # all of the mapping to the scratch cgroup (what it allocated before
    # joining, to the test's own).
    in_scratch = [r for r in ours if r["cgroup_path"] == cg.path]
    assert sum(r["alloc_bytes"] for r in in_scratch) >= SIZE
    assert {r["cgroup_id"] for r in in_scratch} == {cgroup_id}
    # The name it gave itself, once it did: a row drained before that (the
    # interpreter starting) has the name it was executed with.
    assert max(ours, key=lambda r: r["alloc_bytes"])["comm"] == CHILD_COMM
    for r in ours:
        assert r["alloc_bytes"] == r["alloc_pages"] * PAGE_SIZE
        assert r["comm"] in (CHILD_COMM, Path(sys.executable).name[:15])
        assert 0 < r["interval_s"] < 5  # the last, drained at stop, or one a slow guest cut short, is short
    assert src.status.state == "stopped" and src.status.lost == 0
