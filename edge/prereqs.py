"""What an eBPF source needs from the node, checked before anything is loaded,
so that a missing piece is reported as one sentence that says how to fix it.

The order is the order a person fixes them in: privileges first (without
them nothing else can even be checked truthfully), then BTF (a kernel
property no package fixes), then BCC, then the headers BCC compiles with.
Which tracepoints the kernel has comes after all of these, from BTF
(edge/kernel.py): tracefs is never needed."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
from collections.abc import Callable
from pathlib import Path

from pxo.edge.errors import PrerequisiteError

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def find_module(name: str) -> object:
    """The module's spec, without importing it: importing bcc maps libbcc and LLVM (about
    60 MiB), which only pxo's loader process needs (edge/loader.py). ImportError when absent."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"No module named {name!r}")
    return spec


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def can_load_bpf(caps: int) -> bool:
    """BCC's tracing programs need CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON (Linux 5.8+)."""
    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def kernel_headers_dir(release: str, modules_root: Path = Path("/lib/modules")) -> Path | None:
    """The header tree BCC will compile against, or None when there is none."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    candidates = [Path(env)] if env else [modules_root / release / "build"]
    for c in candidates:
        if (c / "include" / "linux" / "kconfig.h").is_file() or (c / "Makefile").is_file():
            return c
    return None


def missing_for_bpf(
    *,
    caps: int | None = None,
    import_module: Callable[[str], object] = find_module,
    release: str | None = None,
    modules_root: Path = Path("/lib/modules"),
    btf_path: Path = Path("/sys/kernel/btf/vmlinux"),
) -> list[str]:
    """Everything the node lacks for BCC-based sources; empty when all is there."""
    caps = effective_capabilities() if caps is None else caps
    release = release or platform.release()
    missing = []
    if not can_load_bpf(caps):
        missing.append(
            "root: loading eBPF programs needs root privileges (CAP_SYS_ADMIN, or CAP_BPF with "
            "CAP_PERFMON); run the edge as root (in Kubernetes: a privileged container)"
        )
    if not btf_path.is_file():
        missing.append(
            f"BTF: {btf_path} is missing; the kernel needs CONFIG_DEBUG_INFO_BTF=y "
            "so that pxo can take struct offsets from it"
        )
    try:
        import_module("bcc")
    except ImportError:
        missing.append(
            "BCC: the Python module 'bcc' cannot be imported; install Debian's "
            "bpfcc-tools and python3-bpfcc and run pxo from the environment "
            "scripts/setup.sh creates (it puts bcc on the path)"
        )
    if kernel_headers_dir(release, modules_root) is None:
        where = os.environ.get("BCC_KERNEL_SOURCE") or str(modules_root / release / "build")
        missing.append(
            f"kernel headers: {where} has none; install linux-headers-{release}, "
            "or run scripts/setup.sh, which links Debian's linux-headers-amd64 there as a fallback"
        )
    return missing


def require_bpf(*, btf_path: Path = Path("/sys/kernel/btf/vmlinux")) -> None:
    missing = missing_for_bpf(btf_path=btf_path)
    if missing:
        raise PrerequisiteError("cannot load eBPF programs; missing " + "; ".join(missing))
