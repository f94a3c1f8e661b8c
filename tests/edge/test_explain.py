"""`pxo explain` on real kills: each rule of docs/explain.md produced by a real workload in a
memory-limited cgroup on this machine, the kill explained through the whole path (edge ->
collector -> cloud -> CLI), and the verdict checked. The same explanation through the REST
API and the CLI's JSON is one answer."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from pxo.edge.cgroups import ScratchCgroup
from tests.helpers.cli import pxo
from tests.helpers.leaks import MiB, RealCluster, Story
from tests.helpers.oom import wait_rows
from tests.helpers.services import http
from tests.helpers.workloads import ChildCgroup, Holder

pytestmark = pytest.mark.requires_bpf

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    with RealCluster(tmp_path_factory.mktemp("explain")) as c:
        yield c


def test_a_steady_leak_is_named_with_its_rate_and_its_climb(cluster: RealCluster) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-leak") as cg, Story(cg, "leak", 3, 200) as leak:
        assert leak.wait() == -signal.SIGKILL
        kill = cluster.wait_kill(cg.path)
        body = cluster.explain(str(leak.pid))
    assert body["kind"] == "oom" and body["kill"]["pid"] == leak.pid
    leakv = next(v for v in body["verdicts"] if v["rule"] == "steady_leak")
    assert 2 * MiB <= leakv["numbers"]["bytes_per_s"] <= 4 * MiB, leakv  # it leaked 3 MiB/s
    assert "steady leak" in leakv["sentence"] and "MiB/s" in leakv["sentence"]
    anon = next(s for s in body["series"] if s["name"] == "anon")
    values = [v for _, v in anon["points"] if v is not None]
    assert len(values) >= 10 and values[-1] > values[0] + 30 * MiB  # the climb, sampled every second
    assert body["holders"] and any(h.get("victim") for h in body["holders"])  # the candidates
    assert kill["constraint"] == "memcg"


def test_a_spike_is_not_a_leak(cluster: RealCluster) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-spike") as cg, Story(cg, "spike", 14, 120) as s:
        assert s.wait() == -signal.SIGKILL
        cluster.wait_kill(cg.path)
        body = cluster.explain(cg.path)
    rules = [v["rule"] for v in body["verdicts"]]
    assert rules[0] == "spike", json.dumps(body["series"][2])
    assert "steady_leak" not in rules


def test_tmpfs_that_fills_the_limit_is_named(cluster: RealCluster) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-shm") as cg, Story(cg, "shm", 40, 6, 100) as s:
        assert s.wait() == -signal.SIGKILL
        cluster.wait_kill(cg.path)
        body = cluster.explain(cg.path)
    v = body["verdicts"][0]
    assert v["rule"] == "tmpfs_shm", body["verdicts"]
    assert v["numbers"]["shmem_bytes"] >= 35 * MiB


def test_a_limit_below_the_working_set(cluster: RealCluster) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-tight") as cg, Story(cg, "plateau", 52, 16, 30) as s:
        assert s.wait() == -signal.SIGKILL
        cluster.wait_kill(cg.path)
        body = cluster.explain(cg.path, "--window", "24s")
    assert [v["rule"] for v in body["verdicts"]] == ["limit_too_low"], json.dumps(body, indent=1)


def test_a_neighbour_in_the_same_parent(cluster: RealCluster) -> None:
    """The parent's limit is hit: a sibling's growth kills the biggest holder."""
    with ScratchCgroup(96 * MiB, prefix="pxo-parent") as parent, ChildCgroup(parent, "holder") as a, \
            ChildCgroup(parent, "grower") as b, Holder(a, 56) as h:
        time.sleep(11)  # one container_memory sample of both
        with Story(b, "leak", 8, 200) as grower:
            kill = cluster.wait_kill(parent.path, timeout=60)
            grower.wait(30)
        body = cluster.explain(str(kill["pid"]))
    assert kill["oom_memcg_path"] == parent.path and kill["pid"] == h.pid, kill
    v = body["verdicts"][0]
    assert v["rule"] == "neighbour", body["verdicts"]
    assert b.path in v["sentence"]


def test_a_user_sigkill_is_not_an_oom(cluster: RealCluster) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-user") as cg, Story(cg, "spike", 60, 1) as s:
        time.sleep(2)
        os.kill(s.pid, signal.SIGKILL)
        assert s.wait() == -signal.SIGKILL
        wait_rows(cluster.edge, f"SELECT * FROM kill_events WHERE target_pid = {s.pid}", 1)
        body = cluster.explain(str(s.pid))
    assert body["kind"] == "user_kill"
    assert [v["rule"] for v in body["verdicts"]] == ["not_oom"]
    assert f"pid {os.getpid()}" in body["verdicts"][0]["sentence"]


def test_the_api_and_the_cli_give_one_answer_and_the_text_shows_the_climb(cluster: RealCluster) -> None:
    with ScratchCgroup(64 * MiB, prefix="pxo-same") as cg, Story(cg, "leak", 4, 200) as leak:
        assert leak.wait() == -signal.SIGKILL
        cluster.wait_kill(cg.path)
        cli_json = cluster.explain(cg.path)
        status, api, _ = http("GET", f"{cluster.url}/api/v1/explain?target={cg.path}", key=cluster.key)
        text = pxo("explain", cg.path, env=cluster.env)
    assert status == 200
    assert api == cli_json
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "OOM kill on node node-x" in out and "Why" in out and "steady leak" in out.lower(), out
    assert any(ch in out for ch in "▂▃▄▅▆▇█")  # the sparklines
    assert "\033[" not in out  # no colour without a terminal
    assert all(len(line) <= 100 for line in out.splitlines()), out


def test_bad_and_unknown_targets_are_clear(cluster: RealCluster) -> None:
    r = pxo("explain", "no such thing here", env=cluster.env)
    assert r.returncode != 0 and "no target pxo knows" in r.stderr
    r = pxo("explain", "/no/such/cgroup", env=cluster.env)
    assert r.returncode != 0 and "no kill matches '/no/such/cgroup'" in r.stderr
    r = pxo("explain", "--window", "3x", env=cluster.env)
    assert r.returncode != 0 and "--window" in r.stderr
