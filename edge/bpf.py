"""Loading pxo's BPF programs: one mechanism for every eBPF source.

- ``load_program("oom", kernel=...)`` passes every struct member offset the
  programs use, taken from the running kernel's BTF (edge/kernel.py; never
  from headers, which may belong to another kernel), with the program's own
  settings as ``-D`` flags, and compiles ``bpf/<name>.bpf.c`` with BCC. Any
  failure is a PrerequisiteError with one clear sentence.
- ``SharedStruct`` is the base of every ctypes mirror of a struct in a
  ``bpf/*.h`` header; tests/edge/test_bpf_layout.py finds every subclass and
  has the BPF compiler check its size and offsets field by field.
- ``CgroupC`` mirrors ``struct pxo_cgroup`` (bpf/cgroup.h), the cgroup record
  every program shares.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pxo.bpf
from pxo.common.timeutil import from_kernel_clock
from pxo.edge.errors import PrerequisiteError
from pxo.edge.kernel import Kernel

log = logging.getLogger(__name__)

PXO_COMM_LEN = 16
PXO_PATH_DEPTH = 16
PXO_NAME_LEN = 128


class SharedStruct(ctypes.Structure):
    """A ctypes mirror of a struct declared in a bpf/*.h header."""

    c_header: ClassVar[str] = ""  # e.g. "oom.h"
    c_struct: ClassVar[str] = ""  # e.g. "oom_event"


class CgroupC(SharedStruct):
    """Mirror of struct pxo_cgroup: keep in sync with bpf/cgroup.h."""

    c_header = "cgroup.h"
    c_struct = "pxo_cgroup"
    _fields_ = [
        ("id", ctypes.c_uint64),
        ("depth", ctypes.c_uint32),
        ("truncated", ctypes.c_uint32),
        ("names", (ctypes.c_char * PXO_NAME_LEN) * PXO_PATH_DEPTH),
    ]


def cgroup_path(cg: CgroupC) -> str | None:
    """'/a/b/c' from the leaf-first names the kernel walk recorded; None when unknown."""
    if cg.id == 0:
        return None
    names = [bytes(cg.names[i].value).decode("utf-8", "replace") for i in range(cg.depth)]
    path = "/" + "/".join(reversed(names))
    return "/..." + path if cg.truncated else path


def comm(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def boot_to_utc(boot_ns: int) -> dt.datetime:
    """A bpf_ktime_get_boot_ns() stamp in UTC."""
    return from_kernel_clock(boot_ns, time.CLOCK_BOOTTIME)


def bpf_dir() -> Path:
    """Where bpf/*.bpf.c and their headers are (the pxo.bpf data package)."""
    for p in pxo.bpf.__path__:
        if (Path(p) / "cgroup.h").is_file():
            return Path(p)
    raise PrerequisiteError("pxo's BPF sources (bpf/*.bpf.c) are not installed with the package")


def load_program(name: str, *, kernel: Kernel, settings: Mapping[str, int] | None = None) -> Any:
    """Compile and load bpf/<name>.bpf.c for ``kernel``; returns the bcc.BPF object (probes auto-attached).

    ``kernel`` comes from edge.kernel.running_kernel(), which has checked the
    node's prerequisites; every struct offset goes to the program as a -D flag
    next to the program's own ``settings``.
    """
    flags = {**kernel.offsets, **(settings or {})}
    src = bpf_dir()
    cflags = [f"-D{k}={v}" for k, v in flags.items()] + [f"-I{src}"]
    from bcc import BPF  # heavy, and only the edge needs it

    try:
        bpf = BPF(src_file=str(src / f"{name}.bpf.c"), cflags=cflags)
    except Exception as exc:  # bcc raises a plain Exception on compile or load failure
        raise PrerequisiteError(f"kernel {kernel.release} refused bpf/{name}.bpf.c: {exc}") from exc
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # the compiler's freed heap, before the next program compiles
    log.info("bpf/%s.bpf.c loaded (struct offsets from %s)", name, kernel.btf_path)
    return bpf


def read_counter(bpf: Any, array: str) -> int:
    """Value of a one-slot BPF_ARRAY(u64) counter such as a program's lost-event count."""
    return int(bpf[array][ctypes.c_int(0)].value)


_MADV_PAGEOUT = 21  # Linux 5.4+
_COMPILER_LIBS = ("libLLVM", "libclang", "libbcc")


def release_compiler_memory(maps: Path = Path("/proc/self/maps")) -> None:
    """Once every program is loaded, give back what compiling them took.

    BCC compiles with an embedded clang/LLVM: the compiler's heap is freed but
    kept by malloc (malloc_trim returns it), and the compiler's code pages stay
    resident (MADV_PAGEOUT drops the clean pages that only this process maps;
    they fault back in if a program is ever compiled again).
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.malloc_trim(0)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and any(lib in parts[5] for lib in _COMPILER_LIBS):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            libc.madvise(lo, hi - lo, _MADV_PAGEOUT)  # advice: failure changes nothing

