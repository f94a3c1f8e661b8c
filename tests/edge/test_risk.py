"""Warning before the kill, on real workloads: oom_risk's estimate, the edge's gauge and the
collector's webhook (Alertmanager's format). A real leak is warned about before the kernel
kills it, once, and resolved after; a cgroup that sits high but flat, or fills its limit with
page cache, is never warned about. The estimator's robustness (one wild sample, reclaimable
cache) is checked on its own too."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from pxo.common.timeutil import from_unix_seconds
from pxo.edge.cgroups import ScratchCgroup, memory_hierarchy
from pxo.edge.sources.base import SourceContext
from pxo.edge.sources.risk import GrowthEstimator, OomRiskSource, theil_sen
from tests.helpers.leaks import MiB, RealCluster, Story, Webhook
from tests.helpers.oom import edge_rows
from tests.helpers.sink import ListSink
from tests.helpers.workloads import Churn, Holder


def test_one_wild_sample_does_not_move_the_estimate() -> None:
    points = [(float(t), 100.0 + 2.0 * t) for t in range(20)]
    assert theil_sen(points) == pytest.approx(2.0)
    points[10] = (10.0, 1e9)  # one reading from another planet
    assert theil_sen(points) == pytest.approx(2.0)


def test_one_step_up_then_flat_is_not_growth() -> None:
    """A service that loads its data at start and then sits high: no estimate at any point."""
    est = GrowthEstimator(window=20, min_samples=5)
    etas = []
    for t in range(40):
        level = (200 if t >= 8 else 20) * (1 << 20) + (t % 3) * 200_000  # one 180 MiB step, then flat with noise
        etas.append(est.add(float(t), level, 256.0 * (1 << 20)).eta)
    assert etas == [None] * 40, etas
    est = GrowthEstimator(window=20, min_samples=5)  # a staircase of steps is a leak: it is estimated
    for t in range(20):
        e = est.add(float(t), (50 + 8 * (t // 4) * 4) * (1 << 20), 256.0 * (1 << 20))
    assert e.eta is not None and 5 * (1 << 20) < e.growth < 10 * (1 << 20)


def test_flat_and_falling_have_no_eta() -> None:
    est = GrowthEstimator(window=20, min_samples=5)
    for t in range(20):
        e = est.add(float(t), 900.0 * (1 << 20) + (t % 2) * 300_000, 1000.0 * (1 << 20))  # flat, noisy
    assert e.eta is None
    est = GrowthEstimator(window=20, min_samples=5)
    for t in range(20):
        e = est.add(float(t), (100 + 4 * t) * (1 << 20), 256 * (1 << 20))  # 4 MiB/s toward 256 MiB
    assert e.eta == pytest.approx((256 - 176) / 4, rel=0.01)


def test_a_level_that_comes_and_goes_is_not_growth_and_a_leak_under_it_is() -> None:
    """What a page-cache churn's writer does to its cgroup (seen on the host, cgroup v1): ``dd``'s
    own memory (its buffer, its kernel memory) comes and goes with each run, a square wave of about
    3 MiB under 64 MiB. A window that holds a low phase, a rise spread over two samples and a high
    phase once had an estimate (an ETA of about 900 s, and a failed CI run); a leak of 3 MiB/s with
    the same wave on top still has one from its fifth sample."""
    levels = [0.5, 0.6, 0.45, 0.5, 0.55, 0.5, 0.45, 0.6, 0.5, 0.5, 1.4, 3.1, 3.2, 3.0, 3.15, 3.2, 3.05, 3.1, 3.2, 3.15]
    est = GrowthEstimator(window=20, min_samples=5)
    etas = [est.add(float(t), v * MiB, 64.0 * MiB).eta for t, v in enumerate(levels)]
    assert etas == [None] * len(levels), etas
    est = GrowthEstimator(window=20, min_samples=5)
    etas = [est.add(float(t), (5 + 3 * t + (2.7 if (t // 5) % 2 else 0)) * MiB, 64.0 * MiB).eta for t in range(20)]
    assert etas[:4] == [None] * 4 and all(e is not None for e in etas[4:]), etas


@pytest.mark.requires_root("creates memory cgroups beneath the test's own")
def test_cgroups_removed_while_read_do_not_stop_the_source() -> None:
    """Pods come and go: a limited cgroup removed between the walk and the read, or while its
    files are read (ENODEV), is dropped; the source keeps running. ENODEV once escaped and
    stopped it for good: no more early warnings on that node."""
    src = OomRiskSource(SourceContext(sink=ListSink()), hierarchy=memory_hierarchy(), discover_every=1)
    src.open()
    with ScratchCgroup(256 * MiB, prefix="pxo-test-risk-churn") as cg, Churn(cg, 16):
        for i in range(20_000):  # each walks, finds the churned cgroups with their limits, reads them
            src.sample(float(i))  # (the old code raised ENODEV within 500 to 6,000 samples, in 4 runs)


@pytest.fixture(scope="module")
def hook() -> Iterator[Webhook]:
    with Webhook() as w:
        yield w


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hook: Webhook) -> Iterator[RealCluster]:
    with RealCluster(tmp_path_factory.mktemp("risk"), "--notify-url", hook.url, "--notify-threshold", "60") as c:
        yield c


@pytest.mark.requires_bpf
def test_a_leak_is_warned_about_before_the_kill_and_resolved_after(cluster: RealCluster, hook: Webhook) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-warn") as cg, Story(cg, "leak", 3, 200) as leak:
        gauge = None
        while gauge is None and leak.proc.poll() is None:
            text = urllib.request.urlopen(cluster.metrics_url, timeout=10).read().decode()
            gauge = next((line for line in text.splitlines() if line.startswith("pxo_edge_oom_eta_seconds{")
                          and f'cgroup_path="{cg.path}"' in line), None)
            time.sleep(0.5)
        assert leak.wait() == -signal.SIGKILL
        killed_at = time.time()
        kill = cluster.wait_kill(cg.path)
        risky = edge_rows(cluster.edge, f"SELECT * FROM oom_risk WHERE cgroup_path = '{cg.path}' "
                                        "AND eta_seconds IS NOT NULL ORDER BY time")
        end = time.monotonic() + 40
        while not hook.alerts(cg.path, "resolved") and time.monotonic() < end:
            time.sleep(0.5)
    assert gauge is not None and 0 < float(gauge.rsplit(" ", 1)[1]) < 60, gauge  # the Prometheus gauge, live
    assert risky and risky[0]["time"] < kill["time"], "no estimate before the kill"
    assert 2.3 * MiB < risky[-1]["growth_bytes_per_s"] < 3.7 * MiB  # it leaked 3 MiB/s
    firing = hook.alerts(cg.path, "firing")
    assert len(firing) == 1, hook.bodies  # once per episode
    a = firing[0]
    assert a["labels"]["alertname"] == "PxoOomImminent" and a["labels"]["node"] == "node-x"
    assert a["startsAt"] < kill["time"].isoformat() + "Z"  # warned before the kernel killed it
    assert float(a["annotations"]["eta_seconds"]) < 60
    body = next(b for b in hook.bodies if a in b["alerts"])
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "pxo"
    resolved = hook.alerts(cg.path, "resolved")
    assert len(resolved) == 1 and resolved[0]["endsAt"] != "0001-01-01T00:00:00Z", hook.bodies
    assert from_unix_seconds(killed_at) > kill["time"]


@pytest.mark.requires_bpf
def test_flat_high_and_page_cache_are_never_warned_about(cluster: RealCluster, hook: Webhook,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    scratch = tmp_path_factory.mktemp("cache") / "churn"
    with ScratchCgroup(64 * MiB, prefix="pxo-flat") as flat, Holder(flat, 50), \
            ScratchCgroup(64 * MiB, prefix="pxo-cache") as cache:
        # page cache: write and re-read a file four times the limit, in the cgroup, for ~20 s
        churn = subprocess.Popen(["sh", "-c", f"echo $$ > {cache.dir}/cgroup.procs; end=$(($(date +%s)+20)); "
                                  f"while [ $(date +%s) -lt $end ]; do dd if=/dev/zero of={scratch} bs=1M "
                                  f"count=256 status=none; cat {scratch} > /dev/null; done"])
        assert churn.wait(60) == 0
        rows = {p: edge_rows(cluster.edge, f"SELECT count(*) AS n, count(eta_seconds) AS warned, "
                                           f"max(usage_bytes) AS top FROM oom_risk WHERE cgroup_path = '{p}'")[0]
                for p in (flat.path, cache.path)}
    scratch.unlink(missing_ok=True)
    assert rows[flat.path]["n"] >= 10 and rows[flat.path]["warned"] == 0, rows
    assert rows[cache.path]["n"] >= 10 and rows[cache.path]["warned"] == 0, rows
    assert rows[cache.path]["top"] > 48 * MiB  # it did fill its limit, with page cache
    assert not hook.alerts(flat.path, "firing") and not hook.alerts(cache.path, "firing")
