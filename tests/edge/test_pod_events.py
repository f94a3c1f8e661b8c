"""Each OOM kill of a pod's process becomes a Kubernetes Event on its pod (edge/kubeevents.py),
posted to the loopback API server stand-in: reason PxoOOMKill, the victim, whether it was the
container's main process (pid 1 of its pid namespace), the limit, and the verdict `pxo explain`
gives; a second kill in the same container counts on the same Event."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxo.edge.cgroups import ScratchCgroup
from tests.helpers.kubeapi import KubeAPI, pod
from tests.helpers.leaks import MiB, RealCluster

pytestmark = pytest.mark.requires_bpf

UID, CID = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture(scope="module")
def api() -> Iterator[KubeAPI]:
    with KubeAPI() as a:
        a.put_pod(pod("cart-5f7c", uid=UID, node="node-x", namespace="shop", containers={"app": CID}))
        yield a


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, api: KubeAPI) -> Iterator[RealCluster]:
    root = tmp_path_factory.mktemp("podevents")
    kubeconfig = api.kubeconfig(root)
    with RealCluster(root, edge_env={"KUBECONFIG": str(kubeconfig)}) as c:
        yield c


def _events(api: KubeAPI, count: int, timeout: float = 30) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        evs = [e for e in api.events("shop") if e["reason"] == "PxoOOMKill"]
        if evs and sum(e["count"] for e in evs) >= count:
            return evs
        time.sleep(0.3)
    raise AssertionError(f"no PxoOOMKill events with count {count}: {api.events('shop')}")


def test_a_kill_in_a_pod_is_an_event_on_it_and_a_second_one_counts(cluster: RealCluster, api: KubeAPI,
                                                                      tmp_path: Path) -> None:
    nested = f"kubepods/burstable/pod{UID}/{CID}"
    grab = tmp_path / "grab.py"
    grab.write_text("b = bytearray(b'x') * (200 << 20)\n")
    with ScratchCgroup(64 * MiB, prefix="pxo-pod", nested=nested) as cg:
        # the container's main process: pid 1 of a new pid namespace, as a runtime starts it
        main = subprocess.Popen(["sh", "-c", f"echo $$ > {cg.dir}/cgroup.procs && exec unshare --pid --fork "
                                 f"{sys.executable} {grab}"])
        main.wait(60)
        first = cluster.wait_kill(cg.path)
        [ev] = _events(api, 1)
        # then a child process that is not the main one (what the kubelet never reports): pid 2 of its
        # pid namespace, under a shell that stays pid 1
        child = subprocess.Popen(["sh", "-c", f"echo $$ > {cg.dir}/cgroup.procs && exec unshare --pid --fork "
                                  f"sh -c '{sys.executable} {grab}; true'"])
        child.wait(60)
        second = cluster.wait_kill_where(f"cgroup_path = '{cg.path}' AND ns_pid = 2")
        _events(api, 2)
        expl = cluster.explain(cg.path)
    assert first["ns_pid"] == 1 and first["namespace"] == "shop" and first["pod"] == "cart-5f7c"
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "cart-5f7c", "namespace": "shop",
                                    "uid": UID, "fieldPath": "spec.containers{app}"}
    assert ev["type"] == "Warning" and ev["source"]["component"] == "pxo-edge" and ev["source"]["host"] == "node-x"
    assert "the container's main process" in ev["message"] and "64 MiB limit" in ev["message"]
    [after] = [e for e in api.events("shop") if e["reason"] == "PxoOOMKill"]
    assert after["metadata"]["name"] == ev["metadata"]["name"] and after["count"] == 2  # aggregated
    assert "not the main process" in after["message"] and f"pid {second['pid']}" in after["message"]
    # the Event's verdict is `pxo explain`'s
    assert expl["verdicts"][0]["sentence"] in after["message"] or len(after["message"]) == 1024
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert len(patches) == 1
