"""cgroup path -> container -> pod: every layout, and the pod watcher against a
real (loopback) Kubernetes API server speaking list + watch (tests/helpers/kubeapi.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pxo.edge.attribution import (
    ATTRIBUTION_COLUMNS,
    NOT_IN_CLUSTER,
    Attributor,
    CgroupIdentity,
    KubePodWatcher,
    parse_cgroup_path,
)
from pxo.edge.kubeclient import KubeClient
from tests.helpers.kubeapi import KubeAPI, pod

# Ids as real nodes show them (from systemd-cgls output of real clusters).
CID = "0ba8ac17e4e7a31fb82279503552fe94e64bab4745bf6fd2ff231e7c8ca8bed0"
CID2 = "358607a37e7ada357032e7f5729c9ae6a3efdb7962acbcbe47ff6a3c5506cb1c"
SANDBOX = "89e8f450417b56acf3089925dfd8f050dd50e950e18cfe83ea923269df601102"
NODE_CID = "d6701ec289c56e4391acb11d07474b3139466857a305490575508a8b7a9fcf22"  # a kind/minikube node container
UID = "2ca4a155-3599-498d-bb9d-4446693fa3ea"
UID_ = UID.replace("-", "_")  # as systemd slice names carry it
UID2 = "ae7a96fb-2bdc-46b0-96e2-78e4af94847b"
STATIC = "36b6d6be73b1065af369b3985edafa09"  # a static pod's config hash, the kubelet's uid for it
PODMAN_POD = "5f4bd6a3c0a4f3e9a1b7c2d8e6f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2"

BURSTABLE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
BESTEFFORT = f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
GUARANTEED = f"/kubepods.slice/kubepods-pod{UID_}.slice"


def I(runtime: str | None = None, cid: str | None = None, uid: str | None = None,  # noqa: E743
      qos: str | None = None, unit: str | None = None) -> CgroupIdentity:
    return CgroupIdentity(runtime=runtime, container_id=cid, pod_uid=uid, qos_class=qos, unit=unit)


LAYOUTS: list[tuple[str, str | None, CgroupIdentity]] = [
    # -- Kubernetes, systemd cgroup driver
    ("k8s systemd containerd burstable", f"{BURSTABLE}/cri-containerd-{CID}.scope",
     I("containerd", CID, UID, "burstable")),
    ("k8s systemd cri-o burstable", f"{BURSTABLE}/crio-{CID}.scope", I("cri-o", CID, UID, "burstable")),
    ("k8s systemd docker (cri-dockerd) burstable", f"{BURSTABLE}/docker-{CID}.scope",
     I("docker", CID, UID, "burstable")),
    ("k8s systemd containerd guaranteed", f"{GUARANTEED}/cri-containerd-{CID}.scope",
     I("containerd", CID, UID, "guaranteed")),
    ("k8s systemd cri-o guaranteed", f"{GUARANTEED}/crio-{CID}.scope", I("cri-o", CID, UID, "guaranteed")),
    ("k8s systemd containerd besteffort", f"{BESTEFFORT}/cri-containerd-{CID}.scope",
     I("containerd", CID, UID, "besteffort")),
    ("k8s systemd docker besteffort", f"{BESTEFFORT}/docker-{CID}.scope", I("docker", CID, UID, "besteffort")),
    ("k8s systemd pod slice, burstable", BURSTABLE, I(None, None, UID, "burstable")),
    ("k8s systemd pod slice, guaranteed", GUARANTEED, I(None, None, UID, "guaranteed")),
    ("k8s systemd pod slice, trailing slash", BESTEFFORT + "/", I(None, None, UID, "besteffort")),
    # the pause sandbox looks like any container: its id, no name from the API
    ("k8s systemd pause sandbox", f"{BURSTABLE}/cri-containerd-{SANDBOX}.scope",
     I("containerd", SANDBOX, UID, "burstable")),
    # conmon monitors a container from the pod's slice: not the container
    ("k8s systemd cri-o conmon", f"{BURSTABLE}/crio-conmon-{CID}.scope",
     I("cri-o", None, UID, "burstable", f"crio-conmon-{CID}.scope")),
    ("k8s systemd sub-cgroup of a container", f"{BURSTABLE}/crio-{CID}.scope/container",
     I("cri-o", CID, UID, "burstable")),
    ("k8s systemd static pod (32-hex uid)",
     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/cri-containerd-{CID}.scope",
     I("containerd", CID, STATIC, "burstable")),
    ("k8s systemd unknown leaf below the pod", f"{BURSTABLE}/something.scope", I(None, None, UID, "burstable")),
    # -- Kubernetes, cgroupfs driver (the bare id does not name the runtime)
    ("k8s cgroupfs burstable", f"/kubepods/burstable/pod{UID}/{CID}", I(None, CID, UID, "burstable")),
    ("k8s cgroupfs guaranteed", f"/kubepods/pod{UID}/{CID}", I(None, CID, UID, "guaranteed")),
    ("k8s cgroupfs besteffort", f"/kubepods/besteffort/pod{UID}/{CID}", I(None, CID, UID, "besteffort")),
    ("k8s cgroupfs pod only", f"/kubepods/burstable/pod{UID}", I(None, None, UID, "burstable")),
    ("k8s cgroupfs cri-o", f"/kubepods/burstable/pod{UID}/crio-{CID}", I("cri-o", CID, UID, "burstable")),
    ("k8s cgroupfs cri-o conmon", f"/kubepods/besteffort/pod{UID}/crio-conmon-{CID}",
     I("cri-o", None, UID, "besteffort", f"crio-conmon-{CID}")),
    ("k8s cgroupfs static pod", f"/kubepods/burstable/pod{STATIC}/{CID}", I(None, CID, STATIC, "burstable")),
    ("k8s cgroupfs unknown leaf", f"/kubepods/burstable/pod{UID}/not-a-container",
     I(None, None, UID, "burstable")),
    # -- kubelet with the systemd driver, runtime taking "slice:prefix:id" literally
    ("k8s slice:prefix:id below containerd.service",
     f"/system.slice/containerd.service/kubepods-burstable-pod{STATIC}.slice:cri-containerd:{CID}",
     I("containerd", CID, STATIC, "burstable")),
    ("k8s slice:prefix:id besteffort uuid",
     f"/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{CID}",
     I("containerd", CID, UID, "besteffort")),
    ("k8s slice:prefix:id guaranteed cri-o", f"/kubepods-pod{UID_}.slice:crio:{CID}",
     I("cri-o", CID, UID, "guaranteed")),
    # -- nested prefixes: the innermost pod wins over the node's own container
    ("kind (systemd, cgroup root /kubelet) in docker",
     f"/system.slice/docker-{NODE_CID}.scope/kubelet.slice/kubelet-kubepods.slice/"
     f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
     I("containerd", CID, UID, "besteffort")),
    ("kind guaranteed", f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/"
     f"cri-containerd-{CID}.scope", I("containerd", CID, UID, "guaranteed")),
    ("minikube (systemd) in docker",
     f"/docker/{NODE_CID}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{CID}.scope", I("cri-o", CID, UID, "besteffort")),
    ("k3d (cgroupfs) in docker", f"/docker/{NODE_CID}/kubepods/besteffort/pod{UID}/{CID}",
     I(None, CID, UID, "besteffort")),
    ("k3s cgroupfs", f"/kubepods/burstable/pod{UID2}/{CID2}", I(None, CID2, UID2, "burstable")),
    ("kubelet cgroupfs with cgroup root /kubelet", f"/kubelet/kubepods/burstable/pod{UID}/{CID}",
     I(None, CID, UID, "burstable")),
    ("kubelet in a container below containerd.service",
     f"/system.slice/containerd.service/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{CID}.scope", I("containerd", CID, UID, "burstable")),
    # -- seen from another cgroup namespace: ancestors elided as ".."
    ("cgroupns view, systemd",
     f"/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
     I("containerd", CID, UID, "besteffort")),
    ("cgroupns view, systemd same QoS", f"/../../kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
     I("cri-o", CID, UID, "burstable")),
    ("cgroupns view, cgroupfs (QoS elided)", f"/../../pod{UID}/{CID}", I(None, CID, UID, None)),
    ("cgroupns view, cgroupfs with QoS", f"/../../../besteffort/pod{UID}/{CID}", I(None, CID, UID, "besteffort")),
    # -- Docker
    ("docker cgroupfs", f"/docker/{CID}", I("docker", CID)),
    ("docker systemd", f"/system.slice/docker-{CID}.scope", I("docker", CID)),
    ("docker, systemd inside the container", f"/system.slice/docker-{CID}.scope/system.slice/nginx.service",
     I("docker", CID)),
    ("docker in docker: the inner container", f"/docker/{NODE_CID}/docker/{CID}", I("docker", CID)),
    ("docker rootless", f"/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{CID}.scope",
     I("docker", CID)),
    # -- Podman
    ("podman rootful", f"/machine.slice/libpod-{CID}.scope", I("podman", CID)),
    ("podman rootless", f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
     I("podman", CID)),
    ("podman conmon", f"/machine.slice/libpod-conmon-{CID}.scope",
     I("podman", None, unit=f"libpod-conmon-{CID}.scope")),
    ("podman rootless conmon", f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{CID}.scope",
     I("podman", None, unit=f"libpod-conmon-{CID}.scope")),
    ("podman pod member", f"/machine.slice/machine-libpod_pod_{PODMAN_POD}.slice/libpod-{CID}.scope",
     I("podman", CID)),
    ("podman split cgroup (systemd inside)", f"/machine.slice/libpod-{CID}.scope/container", I("podman", CID)),
    ("podman cgroupfs", f"/libpod_parent/libpod-{CID}", I("podman", CID)),
    # -- containerd without Kubernetes
    ("containerd daemon (and its shims)", "/system.slice/containerd.service",
     I("systemd", unit="containerd.service")),
    ("nerdctl systemd", f"/system.slice/nerdctl-{CID}.scope", I("containerd", CID)),
    ("nerdctl/ctr cgroupfs, namespace default", f"/default/{CID}", I("containerd", CID)),
    ("ctr other namespace: not recognised", f"/k8s.io/{CID}", I()),
    ("ctr user-chosen id: not recognised", "/default/redis", I()),
    # -- cri-o conmon outside the pod (conmon_cgroup = "system.slice")
    ("cri-o conmon in system.slice", f"/system.slice/crio-conmon-{CID}.scope",
     I("cri-o", None, unit=f"crio-conmon-{CID}.scope")),
    # -- systemd units
    ("systemd service", "/system.slice/nginx.service", I("systemd", unit="nginx.service")),
    ("systemd template service", "/system.slice/system-getty.slice/getty@tty1.service",
     I("systemd", unit="getty@tty1.service")),
    ("systemd docker daemon", "/system.slice/docker.service", I("systemd", unit="docker.service")),
    ("systemd cri-o daemon", "/system.slice/crio.service", I("systemd", unit="crio.service")),
    ("systemd kubelet", "/system.slice/kubelet.service", I("systemd", unit="kubelet.service")),
    ("systemd session scope", "/user.slice/user-1000.slice/session-3.scope", I("systemd", unit="session-3.scope")),
    ("systemd user service", "/user.slice/user-1000.slice/user@1000.service/app.slice/pipewire.service",
     I("systemd", unit="pipewire.service")),
    ("systemd init.scope", "/init.scope", I("systemd", unit="init.scope")),
    ("systemd sub-cgroup of a service", "/system.slice/nginx.service/workers", I("systemd", unit="nginx.service")),
    # -- anything else: nothing
    ("None", None, I()),
    ("empty", "", I()),
    ("root", "/", I()),
    ("a slice", "/system.slice", I()),
    ("kubepods root", "/kubepods.slice", I()),
    ("a QoS slice", "/kubepods.slice/kubepods-burstable.slice", I()),
    ("cgroupfs QoS level", "/kubepods/burstable", I()),
    ("pod<uid> outside kubepods", f"/pod{UID}/{CID}", I()),
    ("short id", "/docker/0ba8ac17e4e7", I()),
    ("LXC: no runtime recognised, only the unit inside", "/lxc.payload.web/init.scope",
     I("systemd", unit="init.scope")),
    ("our own scratch cgroup", "/user.slice/pxo-scratch-1a2b3c4d", I()),
    ("upper-case hex is no kernel id", f"/docker/{CID.upper()}", I()),
]


@pytest.mark.parametrize(("path", "expected"), [(p, e) for _, p, e in LAYOUTS], ids=[n for n, _, _ in LAYOUTS])
def test_layouts(path: str | None, expected: CgroupIdentity) -> None:
    assert parse_cgroup_path(path) == expected


def test_columns_are_declared_in_order() -> None:
    assert [c.name for c in ATTRIBUTION_COLUMNS] == [
        "container_runtime", "container_id", "pod_uid", "qos_class", "namespace", "pod", "container"]
    for c in ATTRIBUTION_COLUMNS:
        assert c.type == "VARCHAR" and c.description and "\n" not in c.description


# -- Attributor -------------------------------------------------------------------


class DictPods:
    """A PodIndex over a dict: (pod uid) -> (namespace, pod, {container id: name})."""

    def __init__(self, pods: dict[str, tuple[str, str, dict[str, str]]]) -> None:
        self.pods = pods
        self.started = self.stopped = False

    def lookup(self, pod_uid: str, container_id: str | None) -> tuple[str, str, str | None] | None:
        if pod_uid not in self.pods:
            return None
        ns, name, containers = self.pods[pod_uid]
        return ns, name, containers.get(container_id or "")

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def test_attribute_without_a_cluster_keeps_the_ids() -> None:
    a = Attributor()
    row = a.attribute(f"{BURSTABLE}/cri-containerd-{CID}.scope")
    assert list(row) == [c.name for c in ATTRIBUTION_COLUMNS]
    assert row == {"container_runtime": "containerd", "container_id": CID, "pod_uid": UID,
                   "qos_class": "burstable", "namespace": None, "pod": None, "container": None}
    nothing = dict.fromkeys(row)
    assert a.attribute(None) == nothing
    assert a.attribute("") == nothing
    assert a.attribute("/some/unknown/place") == nothing


def test_attribute_with_pod_names() -> None:
    pods = DictPods({UID: ("shop", "cart-7d9f", {CID: "cart"})})
    a = Attributor(pods=pods)
    a.start()
    assert pods.started
    assert a.attribute(f"/kubepods/burstable/pod{UID}/{CID}") == {
        "container_runtime": None, "container_id": CID, "pod_uid": UID, "qos_class": "burstable",
        "namespace": "shop", "pod": "cart-7d9f", "container": "cart"}
    sandbox = a.attribute(f"{BURSTABLE}/cri-containerd-{SANDBOX}.scope")
    assert (sandbox["pod"], sandbox["container"], sandbox["container_id"]) == ("cart-7d9f", None, SANDBOX)
    assert a.attribute(BURSTABLE)["pod"] == "cart-7d9f"
    assert a.attribute(f"/kubepods/pod{UID2}/{CID}")["pod"] is None  # a pod the index does not know
    assert a.attribute("/system.slice/nginx.service")["namespace"] is None
    a.stop()
    assert pods.stopped


def test_parse_results_are_memoized_in_a_bounded_lru() -> None:
    a = Attributor(cache_size=2)
    paths = [f"/docker/{CID}", f"/docker/{CID2}", "/system.slice/nginx.service"]
    for p in paths + paths[-1:]:
        a.attribute(p)
    info = a.cache_info()
    assert (info.maxsize, info.currsize, info.hits, info.misses) == (2, 2, 1, 3)


def test_a_failing_pod_index_costs_no_event_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def lookup(self, pod_uid: str, container_id: str | None) -> tuple[str, str, str | None] | None:
            raise RuntimeError("index broken")

    a = Attributor(pods=Broken())
    with caplog.at_level(logging.ERROR, logger="pxo.edge.attribution"):
        for _ in range(3):
            row = a.attribute(f"{BURSTABLE}/cri-containerd-{CID}.scope")
            assert row["container_id"] == CID and row["pod"] is None
    assert len(caplog.records) == 1


# -- KubePodWatcher against a real loopback API server -------------------------------

NODE = "node-1"
TOKEN = "s3cr3t-token"


def wait_until(what: Callable[[], object], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not what():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def api() -> Iterator[KubeAPI]:
    with KubeAPI(token=TOKEN) as server:
        yield server


def client(api: KubeAPI, token: str = TOKEN) -> KubeClient:
    return KubeClient(api.url, token=token)


@pytest.fixture
def watcher(api: KubeAPI) -> Iterator[KubePodWatcher]:
    w = KubePodWatcher(node=NODE, client=client(api), watch_timeout=lambda: 30,
                       backoff=(0.01, 0.05))
    yield w
    w.stop()


def test_watcher_lists_then_follows_the_watch(api: KubeAPI, watcher: KubePodWatcher) -> None:
    api.put_pod(pod("web-0", uid=UID, node=NODE, namespace="shop", containers={"web": CID, "sidecar": CID2}))
    api.put_pod(pod("elsewhere", uid=UID2, node="node-2", containers={"x": SANDBOX}))
    watcher.start()
    wait_until(lambda: watcher.status["connected"])
    assert watcher.lookup(UID, CID) == ("shop", "web-0", "web")
    assert watcher.lookup(UID_, CID2) == ("shop", "web-0", "sidecar")  # the systemd slice form
    assert watcher.lookup(UID, SANDBOX) == ("shop", "web-0", None)  # the pause sandbox
    assert watcher.lookup(UID2, SANDBOX) is None  # another node's pod
    first = api.lists()[0]
    assert first.query["fieldSelector"] == f"spec.nodeName={NODE}"
    assert first.authorization == f"Bearer {TOKEN}"

    other = "7c1f0c3e-9a43-4b6e-8f3a-2d5e6b7a8c9d"
    api.put_pod(pod("job-x", uid=other, node=NODE, namespace="batch",
                    init_containers={"setup": SANDBOX}, containers={"main": NODE_CID}))
    wait_until(lambda: watcher.lookup(other, NODE_CID) is not None)
    assert watcher.lookup(other, NODE_CID) == ("batch", "job-x", "main")
    assert watcher.lookup(other, SANDBOX) == ("batch", "job-x", "setup")

    # MODIFIED: the container was OOM-killed and restarted; both runs keep its name
    restarted = "e" * 64
    api.put_pod(pod("web-0", uid=UID, node=NODE, namespace="shop", containers={"web": restarted, "sidecar": CID2},
                    last_terminated={"web": CID}, ephemeral_containers={"debugger": "f" * 64}))
    wait_until(lambda: watcher.lookup(UID, restarted) == ("shop", "web-0", "web"))
    assert watcher.lookup(UID, CID) == ("shop", "web-0", "web")
    assert watcher.lookup(UID, "f" * 64) == ("shop", "web-0", "debugger")

    api.delete_pod(UID)
    wait_until(lambda: watcher.lookup(UID, CID) is None)
    assert watcher.lookup(other, NODE_CID) is not None
    status = watcher.status
    assert status["connected"] and status["pods"] == 1 and status["relists"] == 0 and status["last_error"] is None
    assert len(api.lists()) == 1
    assert all(w.query["fieldSelector"] == f"spec.nodeName={NODE}" for w in api.watches())


def test_static_pods_are_found_by_their_config_hash(api: KubeAPI, watcher: KubePodWatcher) -> None:
    mirror_uid = "4b7e1c2a-0d3f-4e5a-9b8c-7d6e5f4a3b2c"
    api.put_pod(pod("etcd-node-1", uid=mirror_uid, node=NODE, namespace="kube-system", containers={"etcd": CID},
                    annotations={"kubernetes.io/config.mirror": STATIC, "kubernetes.io/config.hash": STATIC}))
    watcher.start()
    wait_until(lambda: watcher.status["connected"])
    ident = parse_cgroup_path(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC}.slice/"
                              f"cri-containerd-{CID}.scope")
    assert ident.pod_uid is not None
    assert watcher.lookup(ident.pod_uid, ident.container_id) == ("kube-system", "etcd-node-1", "etcd")


def test_watch_resumes_from_the_last_resource_version(api: KubeAPI, watcher: KubePodWatcher) -> None:
    watcher.start()
    wait_until(lambda: watcher.status["connected"])
    wait_until(lambda: len(api.watches()) == 1)
    assert api.watches()[0].query["resourceVersion"] == str(api.resource_version)
    assert api.watches()[0].query["allowWatchBookmarks"] == "true"
    rv = api.put_pod(pod("web-0", uid=UID, node=NODE, containers={"web": CID}))
    wait_until(lambda: watcher.lookup(UID, CID) is not None)
    api.put_pod(pod("far", uid=UID2, node="node-2", containers={"x": CID2}))  # not ours: no event for us
    api.bookmark()  # ... but the bookmark carries the newer resourceVersion
    wait_until(lambda: watcher.status["resource_version"] == str(rv + 1))
    api.end_watches()  # the server's watch timeout
    wait_until(lambda: len(api.watches()) == 2)
    assert api.watches()[1].query["resourceVersion"] == str(rv + 1)
    assert len(api.lists()) == 1  # resumed, not re-listed
    assert watcher.lookup(UID, CID) == ("default", "web-0", "web")


def test_410_gone_relists_and_still_answers(api: KubeAPI, watcher: KubePodWatcher) -> None:
    api.put_pod(pod("old", uid=UID, node=NODE, containers={"old": CID}))
    watcher.start()
    wait_until(lambda: watcher.lookup(UID, CID) is not None)
    wait_until(lambda: len(api.watches()) == 1)
    # Changes the watch never carries (compacted away): only a re-list learns them.
    api.delete_pod(UID, notify=False)
    api.put_pod(pod("new", uid=UID2, node=NODE, containers={"new": CID2}), notify=False)
    api.expire()
    wait_until(lambda: watcher.lookup(UID2, CID2) is not None)
    assert watcher.lookup(UID2, CID2) == ("default", "new", "new")
    assert watcher.lookup(UID, CID) is None
    assert [r.query.get("resourceVersion") for r in api.lists()] == ["0", None]  # then the latest state
    status = watcher.status
    assert status["relists"] == 1 and status["connected"] and status["errors"] == 0
    # and the watch goes on from the new list
    api.put_pod(pod("later", uid=UID, node=NODE, containers={"later": CID}))
    wait_until(lambda: watcher.lookup(UID, CID) == ("default", "later", "later"))


def test_errors_back_off_relist_and_log_once(api: KubeAPI, watcher: KubePodWatcher,
                                             caplog: pytest.LogCaptureFixture) -> None:
    api.put_pod(pod("web-0", uid=UID, node=NODE, containers={"web": CID}))
    api.fail_next(500, count=3)
    with caplog.at_level(logging.INFO, logger="pxo.edge.attribution"):
        watcher.start()
        wait_until(lambda: watcher.status["connected"])
    assert watcher.lookup(UID, CID) == ("default", "web-0", "web")
    status = watcher.status
    assert status["errors"] == 3 and "500" in (status["last_error"] or "")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "500" in warnings[0].getMessage()
    assert len(api.lists()) == 4


def test_a_refused_token_is_reported(api: KubeAPI) -> None:
    w = KubePodWatcher(node=NODE, client=client(api, "wrong"), backoff=(0.01, 0.05))
    w.start()
    try:
        wait_until(lambda: w.status["errors"] >= 1)
        assert not w.status["connected"]
        assert "401" in (w.status["last_error"] or "")
    finally:
        w.stop()


def test_stop_interrupts_an_open_watch(api: KubeAPI) -> None:
    w = KubePodWatcher(node=NODE, client=client(api),
                       watch_timeout=lambda: 600)
    w.start()
    wait_until(lambda: len(api.watches()) == 1)
    thread = w._thread
    w.stop()
    assert thread is not None and not thread.is_alive()
    assert not w.status["connected"]


def test_attributor_with_the_watcher_end_to_end(api: KubeAPI, watcher: KubePodWatcher) -> None:
    api.put_pod(pod("cart-7d9f", uid=UID, node=NODE, namespace="shop", containers={"cart": CID}))
    a = Attributor(pods=watcher)
    a.start()
    wait_until(lambda: watcher.status["connected"])
    assert a.attribute(f"{BURSTABLE}/cri-containerd-{CID}.scope") == {
        "container_runtime": "containerd", "container_id": CID, "pod_uid": UID, "qos_class": "burstable",
        "namespace": "shop", "pod": "cart-7d9f", "container": "cart"}
    a.stop()


# -- from_environment ---------------------------------------------------------------


def test_no_cluster_switches_pod_names_off_with_one_line(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="pxo.edge.attribution"):
        assert KubePodWatcher.from_environment(NODE, environ={}, home=tmp_path) is None
    assert [r.getMessage() for r in caplog.records] == [NOT_IN_CLUSTER]


def test_kubeconfig_gives_a_working_watcher(api: KubeAPI, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{api.url}"}}
users:
- name: edge
  user: {{token: {TOKEN}}}
contexts:
- name: test
  context: {{cluster: test, user: edge}}
current-context: test
""")
    api.put_pod(pod("web-0", uid=UID, node=NODE, namespace="shop", containers={"web": CID}))
    w = KubePodWatcher.from_environment(NODE, environ={"KUBECONFIG": str(kubeconfig)}, home=tmp_path,
                                        backoff=(0.01, 0.05))
    assert w is not None
    try:
        w.start()
        wait_until(lambda: w.lookup(UID, CID) is not None)
        assert w.lookup(UID, CID) == ("shop", "web-0", "web")
    finally:
        w.stop()


def test_default_kubeconfig_location(tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://10.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n")
    w = KubePodWatcher.from_environment(NODE, environ={}, home=tmp_path)
    assert w is not None and w.client.host == "https://10.0.0.1:6443" and w.client.authorization() == "Bearer t"


def test_in_cluster_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    w = KubePodWatcher.from_environment(NODE, environ=env, serviceaccount=tmp_path, home=tmp_path)
    assert w is not None
    assert w.client.host == "https://10.96.0.1:443" and w.client.ca_file == tmp_path / "ca.crt"
    assert w.client.authorization() == "Bearer sa-token"
    (tmp_path / "token").write_text("rotated")  # the kubelet rotates it: read on every request
    assert w.client.authorization() == "Bearer rotated"


def test_in_cluster_without_a_token_logs_the_error_once(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with caplog.at_level(logging.DEBUG, logger="pxo.edge.attribution"):
        assert KubePodWatcher.from_environment(NODE, environ=env, serviceaccount=tmp_path, home=tmp_path) is None
    assert len(caplog.records) == 1
    assert "token file does not exist" in caplog.records[0].getMessage()
    assert "pod names are off" in caplog.records[0].getMessage()


def test_a_broken_kubeconfig_logs_the_error_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "config"
    bad.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    with caplog.at_level(logging.DEBUG, logger="pxo.edge.attribution"):
        assert KubePodWatcher.from_environment(NODE, environ={"KUBECONFIG": str(bad)}, home=tmp_path) is None
    assert len(caplog.records) == 1 and "pod names are off" in caplog.records[0].getMessage()


def test_the_watcher_needs_a_node() -> None:
    with pytest.raises(ValueError):
        KubePodWatcher(node="", client=KubeClient("http://127.0.0.1:1"))
