"""Every OOM kill is captured exactly once, attributed to the right cgroup, across
bursts, edge restarts and a node where eBPF cannot load. Real kills, real edges."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import grpc
import pytest

from pxo.edge import pins
from pxo.edge.cgroups import ScratchCgroup
from pxo.edge.oomdrill import run_drill, start_allocator
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.oom import OomSource
from pxo.v1 import pxo_pb2, pxo_pb2_grpc
from tests.helpers.oom import edge_rows, kmsg_records_after, wait_rows
from tests.helpers.services import Service, start_edge
from tests.helpers.sink import ListSink

pytestmark = pytest.mark.requires_bpf


def test_burst_of_23_kills_across_5_cgroups() -> None:
    """4 cgroups OOM 4 times each, one sequential drill after another; a fifth holds 7
    allocators at once, so the kernel kills several tasks of one cgroup in a row."""
    import os

    sink, inferred = ListSink(), ListSink()
    src = OomSource(SourceContext(sink=sink))
    src.start()
    # A second source without the kernel log: its why comes from eBPF alone, to check against the reports.
    bpf_only = OomSource(SourceContext(sink=inferred, kmsg=Path("/nonexistent/kmsg")))
    bpf_only.start()
    assert bpf_only.status.state == "degraded" and "eBPF only" in bpf_only.status.detail
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    expected: dict[int, str] = {}  # pid -> cgroup path
    counted = 0
    try:
        with ScratchCgroup(32 << 20, prefix="pxo-burst") as a, ScratchCgroup(32 << 20, prefix="pxo-burst") as b, \
                ScratchCgroup(32 << 20, prefix="pxo-burst") as c, ScratchCgroup(32 << 20, prefix="pxo-burst") as d, \
                ScratchCgroup(48 << 20, prefix="pxo-burst") as e:
            crowd = [start_allocator(e, 128) for _ in range(7)]
            for cg in (a, b, c, d):
                for _ in range(4):
                    p = start_allocator(cg, 128)
                    p.wait(timeout=60)
                    assert p.returncode == -signal.SIGKILL
                    expected[p.pid] = cg.path
            for p in crowd:
                p.wait(timeout=60)
                assert p.returncode == -signal.SIGKILL
                expected[p.pid] = e.path
            counted = sum(cg.oom_kills() for cg in (a, b, c, d, e))
            end = time.monotonic() + 10
            while time.monotonic() < end:
                seen = {r["pid"] for t, r in sink.rows if t == "oom_events"}
                if set(expected) <= seen:
                    break
                time.sleep(0.1)
            time.sleep(1.5)  # past the join window: any duplicate would have arrived
            log = kmsg_records_after(kmsg)
    finally:
        os.close(kmsg)
        src.stop()
        bpf_only.stop()

    assert len(expected) == 23 and counted == 23  # the kernel's own counters agree
    ours = [r for t, r in sink.rows if t == "oom_events" and r["pid"] in expected]
    assert sorted(r["pid"] for r in ours) == sorted(expected)  # each kill exactly once
    for r in ours:
        assert r["cgroup_path"] == expected[r["pid"]], r
        assert r["origin"] in ("bpf+kmsg", "bpf")  # eBPF saw every one
    killed_lines = [ln for ln in log if "Killed process" in ln]
    assert sum(1 for pid in expected if any(f"Killed process {pid} " in ln for ln in killed_lines)) == 23
    # Every row says why, the rate-limited ones too (at most 10 reports per 5 s: most of these).
    assert all(r["constraint"] == "memcg" and r["oom_memcg_path"] == expected[r["pid"]] for r in ours), ours
    unreported = [r for r in ours if not r["report_logged"]]
    assert unreported and all(r["pid"] not in reported_pids(log) for r in unreported)
    # eBPF's own reading of why agrees with every report the kernel did print.
    why = {r["pid"]: (r["constraint"], r["oom_memcg_path"], r["chosen"]) for r in inferred.where("oom_events")}
    assert all(why[r["pid"]] == (r["constraint"], r["oom_memcg_path"], True) for r in ours), why
    assert all(r["origin"] == "bpf" for r in inferred.where("oom_events"))
    assert src.status.lost == 0


def reported_pids(records: list[str]) -> set[int]:
    """Victims whose OOM report ("oom-kill:" line) the kernel printed in these records."""
    return {int(r.split(",pid=")[1].split(",")[0]) for r in records if "oom-kill:" in r and ",pid=" in r}


def report_printed(pid: int) -> bool:
    """Did the kernel print the OOM report ("oom-kill:" line) for this victim?"""
    import os

    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return any(f",pid={pid}," in r and "oom-kill:" in r for r in kmsg_records_after(fd))
    finally:
        os.close(fd)


def wait_out_report_ratelimit() -> None:
    """The kernel prints at most 10 OOM reports per 5 s (oom_rs in mm/oom_kill.c); the kill
    line itself is never suppressed. Tests that check report fields start a fresh window."""
    time.sleep(5.5)


def test_restart_recovers_kills_missed_while_down_exactly_once(tmp_path: Path, services: list[Service]) -> None:
    """From the kernel log alone: the programs are unpinned while the edge is down, so eBPF
    misses the kill (with them pinned it comes back as bpf+kmsg: tests/edge/test_pin.py)."""
    data = tmp_path / "edge"
    pinned = ("--bpf-pins", str(pins.PIN_ROOT.parent / f"pxo-test-{uuid.uuid4().hex[:8]}"))
    edge, addr = start_edge(services, data, "", "node-r", "--sources", '["oom"]', *pinned)
    seen_live = run_drill()
    wait_rows(addr, f"SELECT * FROM oom_events WHERE pid = {seen_live.pid}", 1)
    edge.stop()
    services.remove(edge)
    pins.remove(Path(pinned[1]))

    wait_out_report_ratelimit()
    missed = run_drill()  # the edge is down
    reported = report_printed(missed.pid)

    for _round in range(2):  # and a second restart must not duplicate anything
        edge, addr = start_edge(services, data, "", "node-r", "--sources", '["oom"]', *pinned)
        rows = wait_rows(addr, f"SELECT pid, origin, cgroup_path FROM oom_events WHERE pid IN "
                               f"({seen_live.pid}, {missed.pid}) ORDER BY pid", 2)
        time.sleep(1)
        rows = edge_rows(addr, f"SELECT pid, origin, cgroup_path FROM oom_events WHERE pid IN "
                               f"({seen_live.pid}, {missed.pid})")
        by_pid = {r["pid"]: r for r in rows}
        assert len(rows) == 2 and set(by_pid) == {seen_live.pid, missed.pid}, rows
        assert by_pid[missed.pid]["origin"] == "kmsg-backlog"
        assert by_pid[missed.pid]["cgroup_path"] == (missed.cgroup_path if reported else None)
        assert by_pid[seen_live.pid]["origin"] in ("bpf+kmsg", "bpf")
        edge.stop(signal.SIGKILL if _round == 0 else signal.SIGTERM)  # a crash, then a clean stop
        services.remove(edge)
    pins.remove(Path(pinned[1]))


def test_degraded_without_ebpf_still_records_kills(tmp_path: Path, services: list[Service]) -> None:
    # Kernel headers made unavailable: BCC cannot compile, the kernel log still works.
    edge, addr = start_edge(services, tmp_path / "edge", "", "node-d", "--sources", '["oom"]',
                            env={"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers")})
    with grpc.insecure_channel(addr) as ch:
        info = pxo_pb2_grpc.EdgeStub(ch).Describe(pxo_pb2.DescribeRequest(), timeout=10)
    oom = next(s for s in info.sources if s.name == "oom")
    assert oom.state == pxo_pb2.SourceStatus.DEGRADED
    assert "kernel headers" in oom.detail and "kernel log only" in oom.detail
    assert "DEGRADED" in edge.log()

    wait_out_report_ratelimit()
    drill = run_drill()
    rows = wait_rows(addr, f"SELECT * FROM oom_events WHERE pid = {drill.pid}", 1)
    assert len(rows) == 1
    r = rows[0]
    assert r["origin"] == "kmsg" and r["comm"] == "pxo-oom-drill" and r["anon_rss_bytes"] > 32 << 20
    if report_printed(drill.pid):  # else the kernel rate-limited it (another test's OOMs)
        assert r["cgroup_path"] == drill.cgroup_path and r["constraint"] == "memcg"
        assert r["pool_bytes"] == 64 << 20


def test_kill_in_a_kubernetes_container_is_attributed_to_its_pod(tmp_path: Path, services: list[Service]) -> None:
    """A real OOM kill in a cgroup laid out as kubelet's cgroupfs driver lays out a container,
    and a loopback API server that knows the pod: the row names namespace, pod and container."""
    import uuid

    from tests.helpers.kubeapi import KubeAPI, pod

    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    with KubeAPI() as api:
        api.put_pod(pod("web-7d4b9", uid=uid, node="node-k", namespace="shop", containers={"app": cid}))
        kubeconfig = api.kubeconfig(tmp_path)
        _, addr = start_edge(services, tmp_path / "edge", "", "node-k", "--sources", '["oom"]',
                             env={"KUBECONFIG": str(kubeconfig)})
        with ScratchCgroup(64 << 20, prefix="pxo-k8s", nested=f"kubepods/burstable/pod{uid}/{cid}") as cg:
            victim = start_allocator(cg, 256)
            victim.wait(timeout=60)
        assert victim.returncode == -signal.SIGKILL
        rows = wait_rows(addr, f"SELECT * FROM oom_events WHERE pid = {victim.pid}", 1)
    assert len(rows) == 1
    r = rows[0]
    assert r["cgroup_path"] == cg.path
    assert (r["container_id"], r["pod_uid"], r["qos_class"]) == (cid, uid, "burstable")
    assert (r["namespace"], r["pod"], r["container"]) == ("shop", "web-7d4b9", "app")


def test_a_user_sigkill_is_a_kill_event_not_an_oom_kill() -> None:
    import subprocess

    from pxo.edge.sources.signal import KillBpfSource

    sink = ListSink()
    oom, kills = OomSource(SourceContext(sink=sink)), KillBpfSource(SourceContext(sink=sink))
    oom.start()
    kills.start()
    try:
        victim = subprocess.Popen(["sleep", "60"])
        victim.send_signal(signal.SIGKILL)  # what kubelet, oomd or earlyoom would do
        victim.wait()
        end = time.monotonic() + 5
        while time.monotonic() < end and not any(
                t == "kill_events" and r["target_pid"] == victim.pid for t, r in sink.rows):
            time.sleep(0.05)
        time.sleep(1.5)  # past the OOM join window: a wrong oom_events row would be here by now
    finally:
        kills.stop()
        oom.stop()
    import os

    assert [r["sender_pid"] for t, r in sink.rows if t == "kill_events" and r["target_pid"] == victim.pid] == [
        os.getpid()]
    assert not [r for t, r in sink.rows if t == "oom_events" and r["pid"] == victim.pid]
