"""Run one command in a fresh guest booted from one of Debian's cloud kernels.

The guest is this machine seen as a freshly booted node of another kernel:
qemu (TCG) boots the kernel that ``scripts/kernels.sh <suite>`` unpacked, the
host's root filesystem goes in read-only over virtio-fs, /etc /var /tmp /root
/home get private tmpfs overlays, /run is an empty tmpfs, cgroup v2 is the only
hierarchy and tracefs, debugfs and bpffs are not mounted. The command's
combined output and exit status come back over virtio-serial ports.

    run_in_guest("bookworm", ["uname", "-r"], cwd="/", env={}, timeout=120)
    python -m tests.helpers.guest --kernel bookworm -- uname -r

Needs root (virtiofsd serves the host's files as root).
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import hashlib
import lzma
import os
import re
import select
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SUITES = ("bullseye", "bookworm", "trixie", "sid")
QEMU = "/usr/bin/qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # qemu's C daemon (qemu-system-common <= 7.2)
BUSYBOX = "/bin/busybox"  # from busybox-static: the initramfs has no libc
HERE = Path(__file__).resolve().parent
STAGE1 = HERE / "guest_init.sh"
STAGE2 = HERE / "guest_stage2.sh"
# What stage 1 needs to mount the share and report back; deps come from modules.dep.
INITRAMFS_MODULES = ("virtio_pci", "virtiofs", "virtio_console", "overlay")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONSOLE_TAIL_LINES = 40


class GuestError(RuntimeError):
    """The guest could not run the command; ``console`` holds the kernel's log."""

    def __init__(self, message: str, console: str = "") -> None:
        tail = "\n".join(console.splitlines()[-CONSOLE_TAIL_LINES:])
        super().__init__(f"{message}\n--- guest console (last lines) ---\n{tail}" if tail else message)
        self.console = console


class KernelNotFetched(GuestError):
    pass


class GuestToolsMissing(GuestError):
    pass


class GuestBootError(GuestError):
    pass


class GuestCancelled(GuestError):
    pass


class GuestTimeout(GuestError):
    pass


@dataclass(frozen=True)
class GuestResult:
    exit_code: int
    output: str  # the command's stdout and stderr, interleaved as written
    console: str  # the guest kernel's console (ttyS0), for debugging
    release: str
    boot_seconds: float  # qemu start to the command's start
    total_seconds: float


def cache_dir() -> Path:
    """Where scripts/kernels.sh unpacks the kernels (read at each call: tests may change it)."""
    return Path(os.environ.get("PXO_KERNEL_CACHE", "/var/cache/pxo/kernels"))


@dataclass(frozen=True)
class Kernel:
    suite: str
    release: str
    vmlinuz: Path
    modules: Path  # the unpacked /lib/modules/<release>, with build and source links

    @classmethod
    def load(cls, suite: str) -> Kernel:
        if suite not in SUITES:
            raise ValueError(f"unknown kernel suite {suite!r}; expected one of {', '.join(SUITES)}")
        env_file = cache_dir() / suite / "kernel.env"
        hint = f"run scripts/kernels.sh {suite}"
        if not env_file.is_file():
            raise KernelNotFetched(f"the {suite} kernel is not fetched ({env_file} missing): {hint}")
        values = dict(line.split("=", 1) for line in shlex.split(env_file.read_text(), comments=True) if "=" in line)
        kernel = cls(suite, values["RELEASE"], Path(values["VMLINUZ"]), Path(values["MODULES"]))
        if not kernel.vmlinuz.is_file() or not (kernel.modules / "modules.dep").is_file():
            raise KernelNotFetched(f"the {suite} kernel's files under {env_file.parent} are incomplete: {hint}")
        return kernel


def check_tools() -> None:
    missing = [p for p in (QEMU, VIRTIOFSD, BUSYBOX) if not os.access(p, os.X_OK)]
    missing += [t for t in ("unshare", "findmnt", "mount") if shutil.which(t) is None]
    if missing:
        raise GuestToolsMissing(f"missing {', '.join(missing)}: run scripts/kernels.sh (installs qemu-system-x86, "
                                "qemu-system-common and busybox-static)")
    if os.geteuid() != 0:
        raise GuestToolsMissing("booting a guest needs root (virtiofsd serves the host's files as root)")


# ---------------------------------------------------------------------------
# initramfs: a newc cpio archive, uncompressed (the kernel unpacks it as is,
# and concatenated archives are one initramfs, so per-run files are appended).

class Cpio:
    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
        self._parts += [header, b"\0" * (-len(header) % 4), data, b"\0" * (-len(data) % 4)]

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def bytes(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def initramfs_modules(modules: Path) -> list[str]:
    """Relative paths of the modules to insmod, dependencies first; built-in ones are skipped."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {_module_name(m): m for m in deps}
    builtin = {_module_name(m) for m in (modules / "modules.builtin").read_text().split()}
    order: list[str] = []

    def add(mod: str) -> None:
        if mod in order:
            return
        for dep in deps[mod]:  # modules.dep lists every dependency, transitively
            add(dep)
        order.append(mod)

    for name in INITRAMFS_MODULES:
        if name in by_name:
            add(by_name[name])
        elif name not in builtin:
            raise GuestBootError(f"kernel module {name} is neither in {modules}/modules.dep nor built in")
    return order


def _read_module(path: Path) -> bytes:
    """Modules as plain ELF: busybox's insmod cannot rely on the kernel to decompress."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def _is_static(elf: bytes) -> bool:
    """No PT_INTERP program header: the binary runs without a dynamic loader."""
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def base_initramfs(kernel: Kernel) -> Path:
    """The kernel's initramfs (busybox, stage 1 and 2, modules), cached next to the kernel."""
    conf = f"SUITE={kernel.suite}\nRELEASE={shlex.quote(kernel.release)}\nMODULES={shlex.quote(str(kernel.modules))}\n"
    mods = initramfs_modules(kernel.modules)
    busybox = Path(BUSYBOX).read_bytes()
    if not _is_static(busybox):
        raise GuestToolsMissing(f"{BUSYBOX} is dynamically linked: install busybox-static (scripts/kernels.sh does)")
    key = hashlib.sha256()
    for part in (STAGE1.read_bytes(), STAGE2.read_bytes(), conf.encode(), busybox, "\n".join(mods).encode(),
                 str((kernel.modules / "modules.dep").stat().st_mtime_ns).encode()):
        key.update(hashlib.sha256(part).digest())
    path = cache_dir() / kernel.suite / f"initramfs-{key.hexdigest()[:16]}.cpio"
    if path.is_file():
        return path
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "newroot", "ovl", "pxo", "modules"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)  # the kernel opens it for init's stdio before devtmpfs is mounted
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.file("init", STAGE1.read_bytes(), 0o755)
    cpio.file("pxo/stage2.sh", STAGE2.read_bytes(), 0o755)
    cpio.file("pxo/kernel.conf", conf.encode())
    names = []
    for mod in mods:
        name = _module_name(mod) + ".ko"
        cpio.file(f"modules/{name}", _read_module(kernel.modules / mod))
        names.append(name)
    cpio.file("modules/order", ("\n".join(names) + "\n").encode())
    for old in path.parent.glob("initramfs-*.cpio"):
        if old != path:  # built for other scripts: stale
            old.unlink(missing_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(cpio.bytes())
    tmp.rename(path)  # atomic: a concurrent run sees the old file or the whole new one
    return path


def command_script(argv: list[str], cwd: str, env: dict[str, str]) -> str:
    """cmd.sh: the command, its directory and its whole environment, shell-quoted."""
    full_env = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root",
                **env, "PYTHONDONTWRITEBYTECODE": "1"}  # the shared tree is read-only: never try to write .pyc
    assigns = " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items())
    return (f"cd {shlex.quote(cwd)} || exit 125\n"
            f"exec /usr/bin/env -i {assigns} {shlex.join(argv)}\n")


# ---------------------------------------------------------------------------
# processes

def _die_with_parent() -> None:
    """In the child: if this Python process dies, the kernel kills qemu and virtiofsd too."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# virtiofsd in a private mount namespace serves a read-only recursive bind of
# /: the guest mounts the share read-only, but a root guest could remount it
# read-write; a read-only bind makes the host refuse the writes itself.
_READONLY_ROOT = r"""
set -e
mount --rbind / "$1"
findmnt -R -l -n -o TARGET "$1" | sort -r | while read -r m; do mount -o remount,bind,ro "$m"; done
shift
exec "$@"
"""


def _virtiofsd(run_dir: Path, sock: Path) -> subprocess.Popen[bytes]:
    share = run_dir / "share"
    share.mkdir()
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _READONLY_ROOT, "sh", str(share),
            VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={share}",
            "-o", "sandbox=chroot",  # its namespace sandbox fails on these machines
            "-o", "cache=always"]  # nothing on the host changes under a guest run: let the guest cache
    proc = _spawn(argv, run_dir / "virtiofsd.log")
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            log = (run_dir / "virtiofsd.log").read_text(errors="replace")
            raise GuestBootError(f"virtiofsd did not start: {log.strip()[-2000:]}")
        time.sleep(0.02)
    return proc


def _qemu_argv(kernel: Kernel, initrd: Path, run_dir: Path, sock: Path, memory_mb: int, cpus: int) -> list[str]:
    return [
        QEMU, "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot",  # a panic (panic=-1) or reboot ends qemu instead of booting again
        # TCG: /dev/kvm here is a paravirtual KVM that fails on stock kernels;
        # multi-threaded TCG crashed once with an int3 oops.
        "-machine", "pc", "-accel", "tcg,thread=single",
        # max: SSE4.2, AVX2 and RDRAND, as wheels expect and so the RNG is ready at
        # once; la57 off: 4-level paging (kernel address layout) as on most nodes.
        "-cpu", "max,la57=off",
        "-smp", str(cpus), "-m", f"{memory_mb}M",
        # vhost-user (virtiofsd) needs the guest's memory shared with it.
        "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on", "-numa", "node,memdev=mem",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        # No systemd, no mitigations=off (eBPF verifier behaviour follows the
        # defaults); quiet: the serial console shows errors and panics only
        # (an OOM report is slow to print under TCG), dmesg keeps everything.
        "-append", "console=ttyS0 panic=-1 quiet",
        "-chardev", f"file,id=console,path={run_dir / 'console.log'}", "-serial", "chardev:console",
        "-chardev", f"socket,id=fs,path={sock}", "-device", "vhost-user-fs-pci,chardev=fs,tag=root",
        "-device", "virtio-serial-pci,id=ports",
        # The output and status ports write into FIFOs this process reads as
        # the guest writes (qemu's file chardev writes from offset 0 of
        # whatever it opens: a FIFO keeps the stream whole).
        "-chardev", f"file,id=out,path={run_dir / 'out.fifo'}",
        "-device", "virtserialport,bus=ports.0,chardev=out,name=pxo.out",
        "-chardev", f"file,id=status,path={run_dir / 'status.fifo'}",
        "-device", "virtserialport,bus=ports.0,chardev=status,name=pxo.status",
    ]


@contextmanager
def _fifo_reader(path: Path) -> Iterator[int]:
    """A FIFO's read end that never sees EOF before qemu opens it: we hold a write end too."""
    os.mkfifo(path, 0o600)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        yield rfd
    finally:
        os.close(wfd)
        os.close(rfd)


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Streams:
    output: bytearray
    status: bytearray
    boot_seconds: float | None = None  # set when the guest reports "start"


def _pump(qemu: subprocess.Popen[bytes], out_fd: int, status_fd: int, deadline: float,
          on_output: Callable[[bytes], None] | None,
          cancel: threading.Event | None = None) -> tuple[_Streams, bool]:
    """Read the ports until qemu exits (True), the deadline passes or ``cancel`` is set (False)."""
    streams = _Streams(bytearray(), bytearray())
    qemu_started = time.monotonic()
    while True:
        done = qemu.poll() is not None  # then whatever qemu wrote is in the FIFOs: drain it all
        ready = [out_fd, status_fd] if done else select.select([out_fd, status_fd], [], [], 0.2)[0]
        for fd in ready:
            data = _drain(fd)
            if fd == out_fd:
                streams.output += data
                if on_output and data:
                    on_output(data)
            else:
                streams.status += data
                if streams.boot_seconds is None and streams.status.startswith(b"start "):
                    streams.boot_seconds = time.monotonic() - qemu_started
        if done:
            return streams, True
        if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
            return streams, False


def run_in_guest(suite: str, argv: list[str], *, cwd: str = "/", env: dict[str, str] | None = None,
                 timeout: float = 600, memory_mb: int = 2048, cpus: int = 1,
                 on_output: Callable[[bytes], None] | None = None,
                 cancel: threading.Event | None = None) -> GuestResult:
    """Boot the suite's kernel, run argv as root in cwd with env added to a
    minimal environment (PATH, HOME, LANG; PYTHONDONTWRITEBYTECODE=1 always),
    and return its combined output and exit status. timeout covers the boot.
    on_output, if given, receives the output as it arrives; ``cancel``, once set,
    stops the guest (GuestCancelled)."""
    if not argv:
        raise ValueError("argv is empty")
    started = time.monotonic()
    kernel = Kernel.load(suite)
    check_tools()
    Path("/lib/modules").mkdir(exist_ok=True)  # stage 1 mounts a tmpfs on it
    base = base_initramfs(kernel)
    _sweep_stale_run_dirs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"pxo-guest-{os.getpid()}-{suite}-"))
    virtiofsd = qemu = None
    what = f"{suite} guest ({kernel.release}) running {shlex.join(argv)}"
    try:
        # The command goes in as a second cpio archive appended to the cached
        # one: no kernel command line limit, nothing written on the shared tree.
        per_run = Cpio()
        per_run.dir("pxo")
        per_run.file("pxo/cmd.sh", command_script(argv, cwd, env or {}).encode())
        initrd = run_dir / "initrd.cpio"
        with open(initrd, "wb") as f, open(base, "rb") as b:
            shutil.copyfileobj(b, f)
            f.write(per_run.bytes())
        sock = run_dir / "virtiofs.sock"
        with _fifo_reader(run_dir / "out.fifo") as out_fd, _fifo_reader(run_dir / "status.fifo") as status_fd:
            virtiofsd = _virtiofsd(run_dir, sock)
            qemu = _spawn(_qemu_argv(kernel, initrd, run_dir, sock, memory_mb, cpus), run_dir / "qemu.log")
            streams, finished = _pump(qemu, out_fd, status_fd, started + timeout, on_output, cancel)
        _stop(qemu)
        console = _read(run_dir / "console.log")
        if not finished and cancel is not None and cancel.is_set():
            raise GuestCancelled(f"{what}: cancelled", console)
        if not finished:
            phase = "while booting" if streams.boot_seconds is None else f"(booted in {streams.boot_seconds:.1f} s)"
            tail = bytes(streams.output[-2000:]).decode(errors="replace")
            raise GuestTimeout(f"{what}: timed out after {timeout:.0f} s {phase}; output so far ends with:\n{tail}",
                               console)
        if streams.boot_seconds is None:
            qemu_log = _read(run_dir / "qemu.log").strip()
            raise GuestBootError(f"{what}: the guest stopped before starting the command "
                                 f"(qemu exit {qemu.returncode}{': ' + qemu_log if qemu_log else ''})", console)
        exit_line = re.search(rb"^exit (\d+)$", streams.status, re.MULTILINE)
        if exit_line is None:
            raise GuestBootError(f"{what}: the guest stopped before the command finished", console)
        return GuestResult(exit_code=int(exit_line[1]), output=streams.output.decode(errors="replace"),
                           console=console, release=kernel.release, boot_seconds=streams.boot_seconds,
                           total_seconds=time.monotonic() - started)
    finally:
        _stop(qemu)
        _stop(virtiofsd)
        shutil.rmtree(run_dir, ignore_errors=True)


def _sweep_stale_run_dirs() -> None:
    """Remove run directories left by a process that was killed (SIGKILL skips our cleanup)."""
    for d in Path(tempfile.gettempdir()).glob("pxo-guest-*-*"):
        pid = d.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.guest",
                                     description="Run one command in a fresh guest of one of Debian's kernels.")
    parser.add_argument("--kernel", default="bookworm", choices=SUITES)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--memory", type=int, default=2048, help="MiB")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--cwd", default=os.getcwd())
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--console", action="store_true", help="print the guest's console log at the end")
    parser.add_argument("argv", nargs="+", metavar="-- CMD ARGS")
    opts = parser.parse_args(args)
    env = dict(e.split("=", 1) for e in opts.env)
    # SIGTERM becomes an exception, so qemu and virtiofsd are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def stream(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    try:
        r = run_in_guest(opts.kernel, opts.argv, cwd=opts.cwd, env=env, timeout=opts.timeout,
                         memory_mb=opts.memory, cpus=opts.cpus, on_output=stream)
    except GuestError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130
    if opts.console:
        sys.stderr.write(r.console)
    print(f"guest: {opts.kernel} {r.release}: exit {r.exit_code}, boot {r.boot_seconds:.1f} s, "
          f"total {r.total_seconds:.1f} s", file=sys.stderr)
    return r.exit_code


if __name__ == "__main__":
    sys.exit(main())
