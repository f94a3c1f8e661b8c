"""The image, built from nothing but Debian's archive and PyPI, run as the cluster runs it:
`pxo deploy --containers` (podman), a real container OOM-killed and named, a `podman kill`
told apart from an OOM kill, the containers' specs checked against the rendered
Kubernetes manifests they come from, and a crashed edge started again by podman, as a
kubelet would, with what happened while it was down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pxo.cli import kube
from pxo.cli.containers import LABEL, RESTART_POLICIES, specs
from pxo.common.tls import generate_material
from pxo.common.version import pxo_version
from pxo.edge import pins

pytestmark = pytest.mark.requires_bpf  # root: podman builds and runs rootful containers, the edge loads eBPF

ROOT = Path(__file__).resolve().parents[2]
IMAGE = f"localhost/pxo:{pxo_version()}"
PODMAN_RUN = ["podman", "run", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


@dataclass
class Deployed:
    env: dict[str, str]
    data_dir: Path
    deploy_output: str
    image_output: str
    image_seconds: float
    deploy_seconds: float

    def pxo(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pxo.cli.main", *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)

    def query(self, text: str) -> list[dict[str, Any]]:
        out = self.pxo("query", text, "-o", "json")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        names = [c["name"] for c in doc["columns"]]
        return [dict(zip(names, row, strict=True)) for row in doc["rows"]]

    def kills_of(self, container: str, seconds: float = 20) -> list[dict[str, Any]]:
        """The kill_events of ``container``, once there are any (or none after ``seconds``)."""
        end = time.monotonic() + seconds
        while not (kills := self.query(f'kill_events | last 10m | where container == "{container}"')) \
                and time.monotonic() < end:
            time.sleep(0.5)
        return kills


def inspect(name: str) -> dict[str, Any]:
    out = subprocess.run(["podman", "inspect", name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    home = tmp_path_factory.mktemp("containers")
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "NO_COLOR": "1"}
    started = time.monotonic()
    image = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh")], capture_output=True, text=True,
                           timeout=1800, stdin=subprocess.DEVNULL)
    image_seconds = time.monotonic() - started
    assert image.returncode == 0 and image.stdout.strip() == IMAGE, image.stderr
    d = Deployed(env, home / "data", "", image.stderr, image_seconds, 0.0)
    started = time.monotonic()
    out = d.pxo("deploy", "--containers", "--data-dir", str(d.data_dir), "--cloud-port", "0", timeout=600)
    d.deploy_seconds, d.deploy_output = time.monotonic() - started, out.stderr
    try:
        assert out.returncode == 0, out.stderr
        yield d
    finally:
        gone = d.pxo("delete", "--containers", "--data-dir", str(d.data_dir))
        left = subprocess.run(["podman", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}"],
                              capture_output=True, text=True).stdout.split()
        assert gone.returncode == 0 and left == [], (gone.stderr, left)


def test_the_image_is_labelled_and_runs_unprivileged_by_default(deployed: Deployed) -> None:
    info = inspect(IMAGE)
    labels = info["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == pxo_version()
    assert len(labels["org.opencontainers.image.revision"].split("-")[0]) == 40  # a git commit
    assert info["Config"]["User"] == "65532:65532"
    # what a component needs is there; what it does not is not (compilers, docs, apt lists)
    probe = subprocess.run([*PODMAN_RUN, "--rm", IMAGE, "sh", "-c",
                            "id -u; command -v gcc cc clang || echo no-compiler; ls /var/lib/apt/lists | wc -l; "
                            "find /usr/share/doc /usr/share/man /usr/share/info -type f ! -name copyright | wc -l; "
                            "python -c 'import bcc, pxo.edge.main, pxo.cloud.main; print(\"imports\")'"],
                           capture_output=True, text=True, timeout=120)
    lines = probe.stdout.split()
    assert probe.returncode == 0 and lines[0] == "65532" and "no-compiler" in lines, probe.stdout + probe.stderr
    # no apt lists; of the documentation, the licenses only
    assert lines[1:] == ["no-compiler", "0", "0", "imports"], lines


def test_every_component_is_healthy_and_the_edge_sees_the_host(deployed: Deployed) -> None:
    for name in ("pxo-edge", "pxo-collector", "pxo-cloud"):
        assert inspect(name)["State"]["Status"] == "running", name
    [edge] = json.loads(deployed.pxo("nodes", "-o", "json").stdout)["nodes"]
    states = {s["name"]: s["state"] for s in edge["sources"]}
    for src in ("oom", "kill_bpf", "exit_bpf", "alloc_faults", "reclaim_bpf", "cgroupfs", "risk", "runtime:podman"):
        assert states.get(src) == "running", (src, edge["sources"])
    # the deploy waited on the probes' own ports, and said so
    assert "grpc health on" in deployed.deploy_output and "http health on" in deployed.deploy_output


def test_a_container_oom_kill_is_one_row_with_its_id_runtime_and_name(deployed: Deployed) -> None:
    drill = deployed.pxo("oom-drill", "--container", "--limit-mib", "64")
    assert drill.returncode == 0, drill.stderr
    name = drill.stdout.split("container ")[1].split()[0]
    end = time.monotonic() + 20
    rows: list[dict[str, Any]] = []
    while not rows and time.monotonic() < end:
        rows = deployed.query(f'oom_events | last 10m | where container == "{name}"')
        time.sleep(0.5)
    time.sleep(1.5)
    rows = deployed.query(f'oom_events | last 10m | where container == "{name}"')
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["container_runtime"] == "podman" and len(r["container_id"]) == 64
    assert r["cgroup_path"].endswith(f"libpod-{r['container_id']}") and r["origin"] == "bpf+kmsg"
    assert r["constraint"] == "memcg" and r["memcg_limit_bytes"] == 64 << 20
    assert "podman says OOMKilled=False" in drill.stdout  # podman 4.3 cannot tell; pxo can


def test_a_podman_kill_is_a_kill_event_not_an_oom(deployed: Deployed) -> None:
    name = f"pxo-test-victim-{os.getpid()}"
    subprocess.run([*PODMAN_RUN, "-d", "--name", name, "localhost/pxo-base:bookworm", "sleep", "300"],
                   check=True, capture_output=True)
    try:
        subprocess.run(["podman", "kill", name], check=True, capture_output=True)
        kills = deployed.kills_of(name)
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
    assert kills and kills[0]["target_comm"] == "sleep" and kills[0]["container_runtime"] == "podman", kills
    assert deployed.query(f'oom_events | last 10m | where container == "{name}"') == []


def test_the_containers_are_the_rendered_manifests(deployed: Deployed) -> None:
    """One description: each container's security context, mounts, environment and limits are
    what the pod spec says (a change to the manifests cannot leave the containers behind)."""
    docs = kube.with_secrets(kube.render(IMAGE), "token", generate_material())
    addresses = {n: inspect(n)["NetworkSettings"]["Networks"]["pxo"]["IPAddress"]
                 for n in ("pxo-edge", "pxo-collector", "pxo-cloud")}
    tokens: dict[tuple[str, str], set[str]] = {}
    for d in docs:
        if d["kind"] not in ("DaemonSet", "Deployment"):
            continue
        name, pod = d["metadata"]["name"], d["spec"]["template"]["spec"]
        c, info = pod["containers"][0], inspect(d["metadata"]["name"])
        hc, cfg = info["HostConfig"], info["Config"]
        sc = c.get("securityContext") or {}
        assert info["ImageName"] == IMAGE and cfg["Cmd"] == c["args"], name
        assert hc["Privileged"] == bool(sc.get("privileged")), name
        assert (hc["PidMode"] == "host") == bool(pod.get("hostPID")), name
        assert hc["ReadonlyRootfs"] == bool(sc.get("readOnlyRootFilesystem")), name
        assert hc["RestartPolicy"]["Name"] == RESTART_POLICIES[pod.get("restartPolicy", "Always")] == "always", name
        uid = sc.get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
        assert cfg["User"].split(":")[0] == str(uid), name
        assert set(hc.get("CapDrop") or []) >= {f"CAP_{x}" for x in (sc.get("capabilities") or {}).get("drop", [])
                                                if x != "ALL"} or "ALL" in str(hc.get("CapDrop")), name
        limit = c["resources"]["limits"]["memory"]
        assert hc["Memory"] == int(limit[:-2]) << {"Mi": 20, "Gi": 30}[limit[-2:]], name
        env = dict(e.split("=", 1) for e in cfg["Env"])
        for e in c.get("env", []):
            if "value" in e and "$(" not in e["value"]:
                assert env[e["name"]] == e["value"], (name, e)
            elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                assert env[e["name"]] == addresses[name]
            elif "secretKeyRef" in e.get("valueFrom", {}):  # from a 0600 --env-file, never a command line
                ref = e["valueFrom"]["secretKeyRef"]
                tokens.setdefault((ref["name"], ref["key"]), set()).add(env[e["name"]])
                assert (deployed.data_dir / "secrets" / f"{name}.env").stat().st_mode & 0o777 == 0o600
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        for vm in c.get("volumeMounts", []):
            vol = next(v for v in pod["volumes"] if v["name"] == vm["name"])
            if "emptyDir" in vol:
                assert vm["mountPath"] in hc.get("Tmpfs", {}), (name, vm)
                continue
            assert vm["mountPath"] in mounts, (name, vm)
            assert mounts[vm["mountPath"]]["RW"] == (not vm.get("readOnly")), (name, vm)
            if "hostPath" in vol and vol["hostPath"].get("type") != "DirectoryOrCreate":
                assert mounts[vm["mountPath"]]["Source"] == vol["hostPath"]["path"], (name, vm)
    # the cloud and the collector were given the same cluster token, and a real one
    assert [len(v) for v in tokens.values()] == [1] and len(next(iter(tokens.values())).pop()) >= 32
    # and the translation itself reads every workload of the manifests
    assert [s.name for s in specs(docs, node="n", addresses=addresses, data_dir=Path("/x"))] == [
        "pxo-edge", "pxo-collector", "pxo-cloud"]


def test_a_crashed_edge_is_started_again_and_loses_nothing(deployed: Deployed) -> None:
    """restartPolicy Always, as podman runs it: the edge's process SIGKILLed (a crash, not a
    `podman stop`) is started again, and a container killed while it was down is in its
    answers once: the pinned programs kept the kill, the new edge read it."""
    before = inspect("pxo-edge")
    name = f"pxo-test-while-down-{os.getpid()}"
    subprocess.run([*PODMAN_RUN, "-d", "--name", name, "localhost/pxo-base:bookworm", "sleep", "300"],
                   check=True, capture_output=True)
    try:
        os.kill(before["State"]["Pid"], signal.SIGKILL)
        subprocess.run(["podman", "kill", name], check=True, capture_output=True)  # while the edge is down
        end = time.monotonic() + 120
        while True:
            info = inspect("pxo-edge")
            back = info["RestartCount"] > before["RestartCount"] and info["State"]["Status"] == "running"
            if back and subprocess.run(["podman", "healthcheck", "run", "pxo-edge"],
                                       capture_output=True).returncode == 0:
                break
            assert time.monotonic() < end, (info["State"], info["RestartCount"])
            time.sleep(0.5)
        assert info["State"]["Pid"] != before["State"]["Pid"]
        kills = deployed.kills_of(name, seconds=60)
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
    assert len(kills) == 1 and kills[0]["target_comm"] == "sleep", kills


def test_the_unpin_pods_remove_what_the_edge_pinned_on_the_node(deployed: Deployed) -> None:
    """What `pxo delete --kubernetes` runs on every node (cli/kube.py unpin_daemonset), run as its pod
    spec says (the image, the command, root, privileged, the host's bpffs mounted) on real pins in
    this host's bpffs, under a root of this test's own: they are gone, the readiness probe says so
    only then, and the pod stays until it is stopped, then exits cleanly."""
    edge = next(d for d in kube.render(IMAGE) if d["kind"] == "DaemonSet")
    unpin = kube.unpin_daemonset(edge)
    assert unpin is not None
    pod = unpin["spec"]["template"]["spec"]
    c, volume = pod["containers"][0], pod["volumes"][0]
    root = pins.PIN_ROOT.parent / f"pxo-test-unpin-{uuid.uuid4().hex[:8]}"
    pins.ensure_bpffs(root)
    (root / "oom").mkdir()
    pins.write_blob(root / "kernel", {"facts": "of this test"})
    pins.write_blob(root / "oom" / "manifest", {"program": "oom"})
    name = f"pxo-test-unpin-{uuid.uuid4().hex[:6]}"
    probe = [part.replace(kube.PIN_ROOT, str(root)) for part in c["readinessProbe"]["exec"]["command"]]
    try:
        sc = c["securityContext"]
        run = subprocess.run([*PODMAN_RUN, "-d", "--name", name, *(["--privileged"] if sc["privileged"] else []),
                              "--user", str(sc["runAsUser"]), "-v",
                              f"{volume['hostPath']['path']}:{c['volumeMounts'][0]['mountPath']}",
                              c["image"], *[a.replace(kube.PIN_ROOT, str(root)) for a in c["args"]]],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        end = time.monotonic() + 60
        while subprocess.run(["podman", "exec", name, *probe], capture_output=True).returncode != 0:
            assert time.monotonic() < end, subprocess.run(["podman", "logs", name], capture_output=True, text=True)
            time.sleep(0.5)
        assert not root.exists()
        assert inspect(name)["State"]["Running"]  # it stays, ready, until the DaemonSet goes
        subprocess.run(["podman", "stop", "-t", "20", name], capture_output=True, check=True, timeout=60)
        state = inspect(name)["State"]
        assert state["ExitCode"] == 0, state  # SIGTERM ends it (as PID 1 it would ignore a signal it did not handle)
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stdout
        assert f"removed {root}" in logs
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)
        pins.remove(root)
