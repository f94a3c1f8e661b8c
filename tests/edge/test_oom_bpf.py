"""bpf/oom.bpf.c loaded into this kernel, against real OOM kills."""

from __future__ import annotations

import os
import time

import pytest

from pxo.edge.oomdrill import DRILL_COMM, run_drill
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.oom import OomSource
from tests.helpers.oom import kmsg_records_after
from tests.helpers.sink import ListSink

pytestmark = pytest.mark.requires_bpf


def test_real_oom_kill_is_attributed_to_the_victim_and_its_cgroup() -> None:
    sink = ListSink()
    src = OomSource(SourceContext(sink=sink))
    src.start()
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    try:
        drill = run_drill(limit_mib=64, allocate_mib=256)
        end = time.monotonic() + 5
        while not sink.rows and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)  # anything else (a second event would be a bug) arrives too
        records = kmsg_records_after(kmsg)
    finally:
        os.close(kmsg)
        src.stop()

    assert drill.killed and drill.oom_kills == 1  # the kernel's own count
    ours = [r for t, r in sink.rows if t == "oom_events" and r["pid"] == drill.pid]
    assert len(ours) == 1, sink.rows
    row = ours[0]
    assert row["comm"] == DRILL_COMM
    assert row["cgroup_path"] == drill.cgroup_path  # the victim's own cgroup, walked in the kernel
    assert row["anon_rss_bytes"] > 32 << 20  # it held most of its 64 MiB limit
    assert row["total_vm_bytes"] >= row["anon_rss_bytes"]
    assert row["cgroup_id"] and row["pgtables_bytes"] > 0
    assert src.status.state == "stopped" and src.status.lost == 0

    # The kernel log's half, joined by pid: why, where, and the pool it chose from.
    assert row["origin"] == "bpf+kmsg"
    assert row["constraint"] == "memcg" and row["oom_memcg_path"] == drill.cgroup_path
    assert row["memcg_limit_bytes"] == 64 << 20 and row["memcg_usage_bytes"] > 0
    assert row["pool_bytes"] == 64 << 20  # the cgroup's limit (no swap here), not the victim's usage
    assert row["gfp_mask"] and row["alloc_order"] == 0 and row["kmsg_seq"] > 0
    assert row["memcg_oom_kills"] == 1 and row["memcg_peak_bytes"] >= 60 << 20  # read from cgroupfs
    candidates = [r for t, r in sink.rows if t == "oom_candidates" and r["oom_id"] == row["oom_id"]]
    assert [(c["pid"], c["comm"], c["victim"]) for c in candidates] == [(drill.pid, DRILL_COMM, True)]
    assert candidates[0]["rss_bytes"] > 32 << 20

    # Cross-check with the kernel log: its oom-kill record names the same task and memcg.
    kills = [r for r in records if "oom-kill:" in r and f",pid={drill.pid}," in r]
    assert len(kills) == 1, records
    assert f"task_memcg={drill.cgroup_path}," in kills[0]
    assert f"task={DRILL_COMM}," in kills[0]
