"""`pxo deploy --containers`: pxo as a cluster runs it, on this machine, with podman.

There is one description of how each component runs: the Kubernetes manifests
(deploy/kubernetes), rendered exactly as `pxo deploy --kubernetes` renders them
(the image, the cluster token and the TLS Secrets). Each pod template becomes one
container with the same image, arguments, environment, security context,
mounts, memory limit and probes. Nothing here restates what a component needs;
what Kubernetes gives a pod and one machine has no equivalent for is translated
here, in one place:

    pod IP, Service names          a podman network "pxo", one address per component,
                                   each Service's names in every container's /etc/hosts
    fieldRef spec.nodeName,        this machine's name, the container's address
      status.podIP
    env from a Secret              an --env-file (0600, under <data_dir>/secrets): never on a
                                   command line
    Secret volume                  <data_dir>/secrets/<name>, the volume's mode, the pod's
                                   fsGroup as the files' group, mounted read-only
    hostPath DirectoryOrCreate     pxo's own state: <data_dir>/volumes/<volume>
    other hostPath                 the host's path itself
    PersistentVolumeClaim          <data_dir>/volumes/<claim>, owned by the pod's fsGroup
    emptyDir                       a tmpfs
    probes                         a podman health check probing the same port from inside
                                   (python -m pxo.common.probe), which the deploy runs until
                                   it passes
    the cloud's Service            published on 127.0.0.1:<cloud port>
    scheduling (tolerations,       not applicable: one of each, here
      priority, replicas)

Container names come from podman's own API (``podman system service``), which
the edge reads through the host's /run like on a node; the deploy starts that
service when nothing answers on /run/podman/podman.sock, and the delete stops it.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pxo.cli.config import Config
from pxo.cli.errors import CliError

LABEL = "pxo.dev/deployment=containers"
NETWORK = "pxo"
PODMAN_SOCKET = Path("/run/podman/podman.sock")
IMAGE_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "image.sh"
Say = Callable[[str], None]


@dataclass
class Mount:
    source: str  # a host path, or "" for a tmpfs
    target: str
    read_only: bool = False


@dataclass
class Probe:
    kind: str  # grpc | http
    port: int
    path: str = "/"


@dataclass
class ContainerSpec:
    """One pod template as podman runs it: everything comes from the rendered manifests."""

    name: str  # the workload's name: pxo-edge, pxo-collector, pxo-cloud
    component: str
    image: str
    args: list[str]
    env: list[tuple[str, str]] = field(default_factory=list)  # literal values, in order
    secret_env: list[tuple[str, str, str]] = field(default_factory=list)  # (variable, secret, key)
    privileged: bool = False
    host_pid: bool = False
    read_only_root: bool = False
    user: str | None = None  # uid:gid
    groups: list[int] = field(default_factory=list)  # the pod's fsGroup
    cap_drop: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    no_new_privileges: bool = False
    memory_limit: str | None = None
    stop_timeout: int = 30
    mounts: list[Mount] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # name -> container port
    probe: Probe | None = None
    labels: dict[str, str] = field(default_factory=dict)
    secret_volumes: list[tuple[str, str, int, int | None]] = field(default_factory=list)  # (secret, dir, mode, gid)
    state_dirs: list[tuple[str, int | None]] = field(default_factory=list)  # (dir, owner uid/gid or None)
    restart: str = "always"  # the pod's restartPolicy, as podman names it: a crashed component comes back


# Kubernetes' restartPolicy (Always, the only one a DaemonSet or Deployment allows, is the
# default) as `podman run --restart` takes it. Podman restarts a container that exits unless
# it was stopped or removed through podman, as a kubelet restarts one: an edge that crashes
# comes back, adopts its pinned programs and reads what they kept meanwhile.
RESTART_POLICIES = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")


def podman_memory(quantity: str) -> str:
    """A Kubernetes memory quantity (512Mi) as podman takes it (512m)."""
    m = _QUANTITY.match(str(quantity))
    if not m:
        raise CliError(f"memory limit {quantity!r} in the manifests: pxo deploy --containers reads Ki/Mi/Gi/Ti only")
    return m[1] + {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t", None: ""}[m[2]]


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of earlier variables ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def specs(docs: list[dict[str, Any]], *, node: str, addresses: dict[str, str], data_dir: Path) -> list[ContainerSpec]:
    """The containers of the rendered manifests (workloads in file order)."""
    out = []
    for d in docs:
        if d["kind"] not in ("DaemonSet", "Deployment"):
            continue
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        if len(pod["containers"]) != 1:
            raise CliError(f"{name} has {len(pod['containers'])} containers: pxo deploy --containers runs one per pod")
        c = pod["containers"][0]
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        spec = ContainerSpec(name=name, component=labels.get("app.kubernetes.io/component", name), image=c["image"],
                             args=[*(c.get("command") or []), *(c.get("args") or [])], labels=labels)
        spec.host_pid = bool(pod.get("hostPID"))
        spec.privileged = bool(csc.get("privileged"))
        spec.read_only_root = bool(csc.get("readOnlyRootFilesystem"))
        spec.no_new_privileges = csc.get("allowPrivilegeEscalation") is False
        spec.cap_drop = list((csc.get("capabilities") or {}).get("drop") or [])
        spec.cap_add = list((csc.get("capabilities") or {}).get("add") or [])
        uid, gid = csc.get("runAsUser", psc.get("runAsUser")), csc.get("runAsGroup", psc.get("runAsGroup"))
        if uid is not None:
            spec.user = f"{uid}:{gid if gid is not None else uid}"
        if (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")) and not uid:
            raise CliError(f"{name} must run as non-root but names no runAsUser")
        fs_group = psc.get("fsGroup")
        if fs_group is not None:
            spec.groups.append(int(fs_group))
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        spec.memory_limit = podman_memory(limit) if limit else None
        spec.stop_timeout = int(pod.get("terminationGracePeriodSeconds", 30))
        spec.restart = RESTART_POLICIES[pod.get("restartPolicy", "Always")]
        spec.ports = {p.get("name", str(p["containerPort"])): int(p["containerPort"]) for p in c.get("ports", [])}
        spec.probe = _probe(c, spec.ports)
        _environment(spec, c.get("env") or [], node=node, ip=addresses[name], pod_name=name)
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for vm in c.get("volumeMounts") or []:
            _mount(spec, vm, volumes[vm["name"]], data_dir=data_dir, fs_group=fs_group, uid=uid)
        out.append(spec)
    return out


def _probe(c: dict[str, Any], ports: dict[str, int]) -> Probe | None:
    probe = c.get("startupProbe") or c.get("readinessProbe") or c.get("livenessProbe")
    if not probe:
        return None
    if "grpc" in probe:
        return Probe("grpc", int(probe["grpc"]["port"]))
    if "httpGet" in probe:
        port = probe["httpGet"]["port"]
        return Probe("http", ports[port] if isinstance(port, str) else int(port), probe["httpGet"].get("path", "/"))
    raise CliError(f"a probe of {c['name']} is neither gRPC nor HTTP: pxo deploy --containers cannot wait on it")


def _environment(spec: ContainerSpec, env: list[dict[str, Any]], *, node: str, ip: str, pod_name: str) -> None:
    fields = {"spec.nodeName": node, "status.podIP": ip, "metadata.name": pod_name, "metadata.namespace": "pxo"}
    known: dict[str, str] = {}
    for e in env:
        src = e.get("valueFrom")
        if src is None:
            value = _expand(str(e.get("value", "")), known)
        elif "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            if path not in fields:
                raise CliError(f"{spec.name}: env {e['name']} from field {path}: pxo deploy --containers knows "
                               f"{', '.join(fields)}")
            value = fields[path]
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            spec.secret_env.append((e["name"], ref["name"], ref["key"]))
            continue
        else:
            raise CliError(f"{spec.name}: env {e['name']} comes from {list(src)}: not translated for containers")
        known[e["name"]] = value
        spec.env.append((e["name"], value))


def _mount(spec: ContainerSpec, vm: dict[str, Any], vol: dict[str, Any], *, data_dir: Path, fs_group: int | None,
           uid: int | None) -> None:
    target, ro = vm["mountPath"], bool(vm.get("readOnly"))
    if "hostPath" in vol:
        hp = vol["hostPath"]
        if hp.get("type") == "DirectoryOrCreate":  # made by the deploy: pxo's own state
            source = str(data_dir / "volumes" / vol["name"])
            spec.state_dirs.append((source, uid))
        else:
            source = hp["path"]
        spec.mounts.append(Mount(source, target, ro))
    elif "secret" in vol:
        s = vol["secret"]
        source = str(data_dir / "secrets" / s["secretName"])
        spec.secret_volumes.append((s["secretName"], source, int(s.get("defaultMode", 0o644)), fs_group))
        spec.mounts.append(Mount(source, target, True))
    elif "persistentVolumeClaim" in vol:
        source = str(data_dir / "volumes" / vol["persistentVolumeClaim"]["claimName"])
        spec.state_dirs.append((source, fs_group if fs_group is not None else uid))
        spec.mounts.append(Mount(source, target, ro))
    elif "emptyDir" in vol:
        spec.mounts.append(Mount("", target, False))
    else:
        raise CliError(f"{spec.name}: volume {vol['name']} is {list(vol)[1:]}: not translated for containers")


def run_args(spec: ContainerSpec, *, hosts: dict[str, str], ip: str, publish: dict[int, int],
             ulimits: list[str], data_dir: Path) -> list[str]:
    """`podman run` for one spec (its secret environment in ``env_file(data_dir, spec.name)``)."""
    a = ["run", "--detach", "--name", spec.name, "--hostname", spec.name, "--label", LABEL,
         "--network", NETWORK, "--ip", ip, "--stop-timeout", str(spec.stop_timeout), "--restart", spec.restart]
    for k, v in spec.labels.items():
        a += ["--label", f"{k}={v}"]
    for name, addr in sorted(hosts.items()):
        a += ["--add-host", f"{name}:{addr}"]
    for u in ulimits:
        a += ["--ulimit", u]
    if spec.host_pid:
        a += ["--pid", "host"]
    if spec.privileged:
        a.append("--privileged")
    if spec.read_only_root:
        a += ["--read-only", "--read-only-tmpfs=false"]  # like Kubernetes: no tmpfs it did not ask for
    if spec.user:
        a += ["--user", spec.user]
    for g in spec.groups:
        a += ["--group-add", str(g)]
    for cap in spec.cap_drop:
        a += ["--cap-drop", cap]
    for cap in spec.cap_add:
        a += ["--cap-add", cap]
    if spec.no_new_privileges:
        a += ["--security-opt", "no-new-privileges"]
    if spec.memory_limit:
        a += ["--memory", spec.memory_limit, "--memory-swap", spec.memory_limit]
    for k, v in spec.env:
        a += ["--env", f"{k}={v}"]
    if spec.secret_env:
        a += ["--env-file", str(env_file(data_dir, spec.name))]
    for m in spec.mounts:
        if m.source:
            a += ["--volume", f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"]
        else:
            a += ["--tmpfs", m.target]
    if spec.probe is not None:  # run on demand by the deploy (podman healthcheck run), as a kubelet probes
        target = (f"127.0.0.1:{spec.probe.port}" if spec.probe.kind == "grpc"
                  else f"http://127.0.0.1:{spec.probe.port}{spec.probe.path}")
        a += ["--health-cmd", json.dumps(["python", "-m", "pxo.common.probe", spec.probe.kind, target]),
              "--health-interval", "disable"]
    for host_port, container_port in publish.items():  # host port 0: any free one
        a += ["--publish", f"127.0.0.1:{host_port or ''}:{container_port}"]
    return [*a, spec.image, *spec.args]


def env_file(data_dir: Path, name: str) -> Path:
    """Where a container's environment from Secrets is kept (0600)."""
    return data_dir / "secrets" / f"{name}.env"


# -- the deployment ---------------------------------------------------------------------


class ContainerDeployment:
    """Deploy and delete the containers; state (secrets, volumes, logs) in ``data_dir``."""

    def __init__(self, data_dir: Path, *, podman: str = "podman", say: Say | None = None) -> None:
        self.dir = data_dir
        self.podman = podman
        self.say: Say = say or (lambda s: print(s, flush=True, file=sys.stderr))

    # -- podman -------------------------------------------------------------------

    def _podman(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        try:
            out = subprocess.run([self.podman, *args], capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise CliError("podman is not installed: run scripts/setup.sh (or apt-get install podman runc)") from None
        if check and out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise CliError(f"podman {args[0]} failed: {err}")
        return out.stdout

    @staticmethod
    def ulimits() -> list[str]:
        """Limits runc can set here. Podman asks for 1048576 open files and as many processes by
        default, and runc refuses to start anything where that is more than the machine allows
        (seen on the project's machines: nofile above the hard limit; nproc above 32768 even
        under a hard limit of 96367). So: open files up to this process's own hard limit,
        processes up to 32768, which no pxo component comes near."""
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nofile = 1 << 20 if nofile == resource.RLIM_INFINITY else min(nofile, 1 << 20)
        nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
        return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]

    def running(self) -> list[str]:
        out = self._podman("ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}", check=False)
        return [n for n in out.split() if n]

    # -- deploy ---------------------------------------------------------------------

    def deploy(self, cfg: Config, *, image: str, node: str = "", cloud_port: int = 8700,
               timeout: float = 180.0) -> Config:
        from pxo.cli import kube
        from pxo.common.tls import generate_material

        if os.geteuid() != 0:
            raise CliError("the edge's container is privileged (it loads eBPF): run 'sudo pxo deploy --containers'")
        self._ensure_image(image)
        if self.running():
            self.say("pxo's containers are running; replacing them")
            self.delete(quiet=True, unpin=False)  # the new edge adopts what is still current
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        node = node or socket.gethostname()
        token = secrets.token_urlsafe(32)
        self.say("creating the cluster CA and certificates ...")
        docs = kube.with_secrets(kube.render(image), token, generate_material())
        subnet = self._network()
        names = [d["metadata"]["name"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")]
        addresses = {n: str(subnet.network_address + 10 + i) for i, n in enumerate(names)}
        hosts = _service_hosts(docs, addresses)
        workloads = specs(docs, node=node, addresses=addresses, data_dir=self.dir)
        secret_docs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
        self._write_secrets(workloads, secret_docs)
        self._ensure_api_service()
        cloud_http = _cloud_port(docs)
        try:
            for spec in workloads:
                for directory, owner in spec.state_dirs:
                    Path(directory).mkdir(parents=True, exist_ok=True)
                    if owner is not None:
                        os.chown(directory, owner, owner)
                publish = {cloud_port: cloud_http} if spec.component == "cloud" else {}
                self.say(f"starting {spec.name} ({spec.image}) ...")
                self._podman(*run_args(spec, hosts=hosts, ip=addresses[spec.name], publish=publish,
                                       ulimits=self.ulimits(), data_dir=self.dir))
            for spec in workloads:
                self._wait_ready(spec, addresses[spec.name], timeout)
            cloud = next(s for s in workloads if s.component == "cloud")
            bound = self._podman("port", cloud.name, f"{cloud_http}/tcp").split()
            url = f"http://{bound[0] if bound else f'127.0.0.1:{cloud_port}'}"
            data = dict(cloud.env).get("PXO_CLOUD_DATA_DIR", "/var/lib/pxo/cloud")
            from pxo.cli.api import Api
            from pxo.cli.local import key_works, wait_node_live

            key = cfg.api_key if cfg.api_url == url and cfg.api_key and key_works(url, cfg.api_key) else ""
            if not key:
                key = self._podman("exec", cloud.name, "python", "-m", "pxo.cloud", "bootstrap",
                                   "--data-dir", data).strip()
            wait_node_live(Api(url, key), node, timeout, say=self.say, logs=f"podman logs {names[0]}")
        except BaseException:
            self.say("the deploy failed; the containers' last words:")
            for n in names:
                self.say(f"--- podman logs --tail 5 {n}\n" + self._podman("logs", "--tail", "5", n, check=False))
            self.delete(quiet=True)
            raise
        return Config(api_url=url, api_key=key, local_data_dir=cfg.local_data_dir,
                      containers_data_dir=str(self.dir))

    def _ensure_image(self, image: str) -> None:
        if subprocess.run([self.podman, "image", "exists", image], stdin=subprocess.DEVNULL).returncode == 0:
            return
        if not image.startswith("localhost/pxo:") or not IMAGE_SCRIPT.is_file():
            raise CliError(f"the image {image} is not on this machine: build it with scripts/image.sh, or "
                           "`podman load -i pxo.oci.tar`")
        self.say(f"the image {image} is not built yet: building it (scripts/image.sh, a few minutes) ...")
        built = subprocess.run(["bash", str(IMAGE_SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=1800)
        if built.returncode != 0 or built.stdout.strip() != image:
            raise CliError(f"building {image} failed: {(built.stderr.strip().splitlines() or ['?'])[-1]}")

    def _network(self) -> ipaddress.IPv4Network:
        if subprocess.run([self.podman, "network", "exists", NETWORK], stdin=subprocess.DEVNULL).returncode != 0:
            self._podman("network", "create", "--label", LABEL, NETWORK)
        info = json.loads(self._podman("network", "inspect", NETWORK))
        subnets = info[0].get("subnets") or []
        if not subnets:
            raise CliError(f"podman network {NETWORK} has no subnet")
        return ipaddress.ip_network(subnets[0]["subnet"])  # type: ignore[return-value]

    def _write_secrets(self, workloads: list[ContainerSpec], docs: dict[str, dict[str, Any]]) -> None:
        def value(secret: str, key: str) -> bytes:
            d = docs.get(secret)
            if d is None:
                raise CliError(f"the manifests use Secret {secret}, which pxo deploy does not make")
            if key in (d.get("stringData") or {}):
                return str(d["stringData"][key]).encode()
            return base64.b64decode(d["data"][key])

        for spec in workloads:
            for secret, directory, mode, gid in spec.secret_volumes:
                path = Path(directory)
                if path.exists():
                    shutil.rmtree(path)
                path.mkdir(parents=True, mode=0o750)
                os.chown(path, 0, gid or 0)
                for key in sorted({*(docs[secret].get("data") or {}), *(docs[secret].get("stringData") or {})}):
                    f = path / key
                    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        out.write(value(secret, key))
                    os.chown(f, 0, gid or 0)
                    os.chmod(f, mode)
            if spec.secret_env:
                path = env_file(self.dir, spec.name)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as env_out:
                    for var, secret, key in spec.secret_env:
                        env_out.write(f"{var}={value(secret, key).decode()}\n")

    def _ensure_api_service(self) -> None:
        """Podman's Docker-compatible API, where the edge finds container names."""
        if _socket_answers(PODMAN_SOCKET):
            return
        PODMAN_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "podman-service.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([self.podman, "system", "service", "--time", "0", f"unix://{PODMAN_SOCKET}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        (self.dir / "podman-service.pid").write_text(f"{proc.pid}\n")
        end = time.monotonic() + 15
        while not _socket_answers(PODMAN_SOCKET):
            if proc.poll() is not None or time.monotonic() > end:
                raise CliError(f"podman system service did not start (see {self.dir / 'podman-service.log'})")
            time.sleep(0.1)

    def _wait_ready(self, spec: ContainerSpec, ip: str, timeout: float) -> None:
        if spec.probe is None:
            return
        self.say(f"waiting for {spec.name} ({spec.probe.kind} health on {ip}:{spec.probe.port}) ...")
        end = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < end:
            state = self._podman("inspect", "--format", "{{.State.Status}}", spec.name, check=False).strip()
            if state in ("exited", "stopped"):
                raise CliError(f"{spec.name} exited at start: {self._last_line(spec.name)}",
                               detail=f"logs: podman logs {spec.name}")
            probe = subprocess.run([self.podman, "healthcheck", "run", spec.name], capture_output=True,
                                   text=True, stdin=subprocess.DEVNULL, timeout=30)
            ok, last = probe.returncode == 0, (probe.stdout + probe.stderr).strip() or "unhealthy"
            if ok:
                self.say(f"  {spec.name} is ready")
                return
            time.sleep(0.5)
        raise CliError(f"{spec.name} was not ready within {timeout:g} s ({last})",
                       detail=f"logs: podman logs {spec.name}")

    def _last_line(self, name: str) -> str:
        lines = [ln for ln in self._podman("logs", "--tail", "20", name, check=False).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return (errors or lines or ["(no output)"])[-1].strip()

    # -- delete -----------------------------------------------------------------------

    def delete(self, *, quiet: bool = False, unpin: bool = True) -> list[str]:
        """Remove the containers and their network; ``unpin``: and the eBPF programs the edge pinned."""
        names = self.running()
        if names:
            if not quiet:
                self.say(f"removing {', '.join(names)} ...")
            self._podman("rm", "--force", "--time", "30", *names, check=False)
        if subprocess.run([self.podman, "network", "exists", NETWORK], stdin=subprocess.DEVNULL).returncode == 0:
            self._podman("network", "rm", "--force", NETWORK, check=False)
        pid_file = self.dir / "podman-service.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink(missing_ok=True)
        if unpin:  # the edge container pinned its programs in the host's /sys/fs/bpf
            from pxo.cli.local import unpin_programs

            unpin_programs(sys.executable, say=self.say, quiet=quiet)
        return names


def _service_hosts(docs: list[dict[str, Any]], addresses: dict[str, str]) -> dict[str, str]:
    """Every Service's DNS names -> the address of the workload its selector picks."""
    by_labels = {}
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment"):
            by_labels[d["metadata"]["name"]] = d["spec"]["template"]["metadata"].get("labels", {})
    hosts = {}
    for d in docs:
        if d["kind"] != "Service":
            continue
        sel = d["spec"].get("selector") or {}
        target = next((n for n, labels in by_labels.items() if sel and sel.items() <= labels.items()), None)
        if target is None:
            continue
        name, ns = d["metadata"]["name"], d["metadata"].get("namespace", "default")
        for h in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
            hosts[h] = addresses[target]
    return hosts


def _cloud_port(docs: list[dict[str, Any]]) -> int:
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "pxo-cloud":
            for p in d["spec"]["template"]["spec"]["containers"][0].get("ports", []):
                return int(p["containerPort"])
    raise CliError("the manifests have no pxo-cloud Deployment with a port")


def _socket_answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        return s.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False
    finally:
        s.close()


# -- a real container's OOM kill ----------------------------------------------------

# Runs in the container: allocate (and touch) 1 MiB at a time, 4 times the limit at most.
_ALLOCATOR = ("import sys\nheld = []\nfor _ in range(int(sys.argv[1])):\n"
              "    held.append(bytearray(b'\\x01') * (1 << 20))\nsys.exit(3)\n")


@dataclass
class ContainerDrill:
    name: str
    container_id: str
    exit_code: int
    podman_oom_killed: bool  # what podman itself says (always false in podman 4.3; fixed in 5.0)


def container_drill(image: str, *, limit_mib: int = 64, podman: str = "podman") -> ContainerDrill:
    """`podman run --memory` a container that allocates past its limit; it is removed afterwards."""
    name = f"pxo-oom-drill-{secrets.token_hex(4)}"
    d = ContainerDeployment(Path("/nonexistent"), podman=podman)
    limit = f"{limit_mib}m"
    args = ["run", "--name", name, "--memory", limit, "--memory-swap", limit, "--label", "pxo.dev/drill=1"]
    for u in d.ulimits():
        args += ["--ulimit", u]
    run = subprocess.run([podman, *args, image, "python", "-c", _ALLOCATOR, str(4 * limit_mib)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    try:
        info = json.loads(d._podman("inspect", name))[0]
    except (CliError, ValueError, IndexError):
        raise CliError(f"the drill container did not run: {(run.stderr.strip().splitlines() or ['?'])[-1]}") from None
    finally:
        d._podman("rm", "--force", name, check=False)
    if run.returncode != 128 + signal.SIGKILL:
        raise CliError(f"the drill container {name} was not OOM-killed (exit {run.returncode})")
    return ContainerDrill(name, info["Id"], run.returncode, bool(info.get("State", {}).get("OOMKilled")))
