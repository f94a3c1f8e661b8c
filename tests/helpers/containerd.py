"""A real containerd for tests, private to one test run, driven through the CRI as a kubelet would.

containerd comes from Debian's package (``apt-get install containerd``); it runs
as a child process with its own config, root, state, runc root and sockets
under one temporary directory, so it never touches (or is confused with) a
containerd of the machine. Its CRI plugin uses cgroupfs and runc; pods get the
host's network (NamespaceMode NODE), so no CNI plugin is needed.

No registry is reachable from the project's machines, so the images come from
podman: a "pause" image built from the local Debian base image (its command
sleeps forever) is saved as an OCI layout and imported into containerd's
``k8s.io`` namespace; it is the sandbox image and the containers' image too.

    with pause_image() as image, Containerd(image) as ctrd:
        pod = ctrd.run_pod("oomy", "pxo-test")
        cid = ctrd.run_container(pod, "worker")

Leaves nothing behind, failed or not: pods are removed through the CRI,
containerd is stopped, any shim or container process it left is killed (by
pid), its mounts under the temporary directory are unmounted, its cgroups
removed, the directory deleted and the image's podman tag removed.

Needs root, containerd + ctr, runc, podman and the base image (``missing()``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from pxo.cri.v1 import api_pb2, api_pb2_grpc

BASE_IMAGE = "localhost/pxo-base:bookworm"
RUNC = "/usr/sbin/runc"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6/1.7 put shim sockets here whatever its state dir


def missing() -> str:
    """Why a real containerd cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool, package in (("containerd", "containerd"), ("ctr", "containerd"), ("podman", "podman")):
        if shutil.which(tool) is None:
            return f"no {tool} (apt-get install --no-install-recommends {package})"
    if not os.access(RUNC, os.X_OK):
        return f"no {RUNC} (apt-get install runc)"
    r = subprocess.run(["podman", "image", "exists", BASE_IMAGE], capture_output=True, timeout=60)
    if r.returncode != 0:
        return f"no podman image {BASE_IMAGE} (scripts/image.sh)"
    return ""


@contextlib.contextmanager
def pause_image() -> Iterator[tuple[str, Path]]:
    """(reference, OCI archive) of a pause image: the base image whose command sleeps forever."""
    ref = f"localhost/pxo-cri-pause:{uuid.uuid4().hex[:12]}"  # a tag of its own: parallel runs never share one
    work = Path(tempfile.mkdtemp(prefix="pxo-pause-"))
    try:
        (work / "Containerfile").write_text(f'FROM {BASE_IMAGE}\nCMD ["sleep", "infinity"]\n')
        _run(["podman", "build", "-q", "-t", ref, str(work)], timeout=120)
        # An uncompressed OCI layout tarred by hand rather than `--format oci-archive`: the same
        # bytes for ctr, without gzipping ~120 MB and gunzipping it again (~4 s saved).
        _run(["podman", "save", "-q", "--format", "oci-dir", "--uncompressed", "-o", str(work / "oci"), ref],
             timeout=120)
        _run(["tar", "-C", str(work / "oci"), "-cf", str(work / "pause.tar"), "."], timeout=60)
        shutil.rmtree(work / "oci")
        yield ref, work / "pause.tar"
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Pod:
    id: str
    config: api_pb2.PodSandboxConfig


def kubelet_labels(pod: Pod, container: str) -> dict[str, str]:
    """The labels the kubelet puts on a pod's container (pkg/kubelet/types/labels.go)."""
    md = pod.config.metadata
    return {"io.kubernetes.container.name": container, "io.kubernetes.pod.name": md.name,
            "io.kubernetes.pod.namespace": md.namespace, "io.kubernetes.pod.uid": md.uid}


class Containerd:
    """containerd with its CRI plugin, as a child process; a context manager."""

    def __init__(self, image: tuple[str, Path]) -> None:
        self.image, self._archive = image
        # Short, under /tmp: Unix socket paths are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="pxo-ctrd-", dir="/tmp"))
        self.socket = self.dir / "containerd.sock"
        self.cgroup_parent = f"/{self.dir.name}"  # every pod's cgroups below one parent of its own
        self.proc: subprocess.Popen[bytes] | None = None
        self._pods: list[str] = []
        self._channel: grpc.Channel | None = None
        self._created_run_dirs = [d for d in (SHIM_SOCKETS.parent, SHIM_SOCKETS) if not d.exists()]

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Containerd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        config = self.dir / "config.toml"
        config.write_text(self._config())
        self._log = open(self.dir / "containerd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self._channel = grpc.insecure_channel(f"unix://{self.socket}")
        stub: Any = api_pb2_grpc.RuntimeServiceStub  # untyped: grpcio-tools writes no .pyi for services
        self.stub: Any = stub(self._channel)
        end = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.version = self.stub.Version(api_pb2.VersionRequest(), timeout=1)
                break
            except grpc.RpcError:
                if time.monotonic() > end:
                    raise AssertionError(f"containerd's CRI did not answer within 20 s:\n{self.log()}") from None
                time.sleep(0.1)
        _run(["ctr", "--address", str(self.socket), "-n", "k8s.io", "images", "import", str(self._archive)],
             timeout=120)

    def stop(self) -> None:
        """Undo everything start() and the pods did; never raises (it runs after failures too)."""
        for pod in reversed(self._pods):
            with contextlib.suppress(grpc.RpcError):
                self.stub.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=20)
            with contextlib.suppress(grpc.RpcError):
                self.stub.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=20)
        if self._channel is not None:
            self._channel.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._log.close()
        # What a failed removal (or a killed containerd) can leave: shims, container processes, mounts, cgroups.
        for pid in self._leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._unmount_all()
        self._remove_cgroups()
        for pod in self._pods:  # a shim killed above had no chance to remove its socket
            name = hashlib.sha256(os.path.join(str(self.socket), "k8s.io", pod).encode()).hexdigest()
            (SHIM_SOCKETS / name).unlink(missing_ok=True)
        for d in reversed(self._created_run_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: another containerd's sockets stay
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "containerd.log"
        return path.read_text(errors="replace")[-8000:] if path.exists() else ""

    # -- the kubelet's part ---------------------------------------------------------

    def run_pod(self, name: str, namespace: str) -> Pod:
        uid = str(uuid.uuid4())
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                    "io.kubernetes.pod.uid": uid},
            linux=api_pb2.LinuxPodSandboxConfig(
                cgroup_parent=self.cgroup_parent,
                # The node's network (and with it its UTS namespace: so no hostname): no CNI needed.
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE))))
        # The CRI plugin learns of the imported image from containerd's events, an instant later;
        # before that it would try to pull it (and fail: no registry).
        end = time.monotonic() + 10
        while True:
            try:
                reply = self.stub.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60)
                break
            except grpc.RpcError as exc:
                if time.monotonic() > end:
                    raise AssertionError(f"RunPodSandbox failed: {exc}\n{self.log()}") from None
                time.sleep(0.2)
        self._pods.append(reply.pod_sandbox_id)
        return Pod(reply.pod_sandbox_id, config)

    def run_container(self, pod: Pod, name: str, *, labels: Mapping[str, str] | None = None) -> str:
        """Create and start a container in ``pod``; the kubelet's labels unless ``labels`` is given."""
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name), image=api_pb2.ImageSpec(image=self.image),
            command=["sleep", "infinity"], labels=kubelet_labels(pod, name) if labels is None else labels)
        cid: str = self.stub.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config), timeout=60).container_id
        self.stub.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    # -- plumbing -------------------------------------------------------------------

    def _config(self) -> str:
        d = self.dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{self.image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Pause containers ask for oom_score_adj -998; lowering it needs CAP_SYS_RESOURCE, which a
  # test machine (a container, a microVM's init) may not grant: runc then fails to start them.
  restrict_oom_score_adj = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{RUNC}"
  Root = "{d}/runc"
[{cri}.cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/conf"
"""

    def _leftover_pids(self) -> list[int]:
        """Shims of this containerd (by their -address) and processes in its pods' cgroups."""
        pids: set[int] = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-address" in argv and str(self.socket).encode() in argv:
                pids.add(int(proc.name))
        for procs in self._cgroup_dirs("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
        pids.discard(os.getpid())
        return sorted(pids)

    def _cgroup_dirs(self, name: str = "") -> list[Path]:
        """Every cgroup below this containerd's parent, in every hierarchy, deepest first."""
        found: set[Path] = set()
        # v2 alone: /sys/fs/cgroup is the hierarchy; v1 (and hybrid): one hierarchy per folder below it.
        for hierarchy in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []:
            top = (hierarchy / self.cgroup_parent.lstrip("/")).resolve()
            if top.is_dir():
                found.update(p for p in top.rglob("*") if p.is_dir())
                found.add(top)
        deepest_first = sorted(found, key=lambda p: len(p.parts), reverse=True)
        return [p / name for p in deepest_first] if name else deepest_first

    def _remove_cgroups(self) -> None:
        for cg in self._cgroup_dirs():
            end = time.monotonic() + 5
            while cg.exists():
                try:
                    cg.rmdir()
                except OSError:  # EBUSY for a moment after its last process died
                    if time.monotonic() > end:
                        break
                    time.sleep(0.05)

    def _unmount_all(self) -> None:
        prefix = str(self.dir) + "/"
        points = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefix):
                    points.append(point)
        for point in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _run(argv: list[str], *, timeout: float) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
