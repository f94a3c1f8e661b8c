"""Loading pxo's BPF programs: one mechanism for every eBPF source.

- ``load_program("oom", kernel=...)`` passes every struct member offset the
  programs use, taken from the running kernel's BTF (edge/kernel.py; never
  from headers, which may belong to another kernel), with the program's own
  settings as ``-D`` flags; ``bpf/<name>.bpf.c`` is compiled with BCC by a
  helper process and pinned in bpffs, so it outlives the edge (edge/pins.py,
  edge/loader.py). Any failure is a PrerequisiteError with one clear sentence.
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

from pxo.common.timeutil import from_kernel_clock
from pxo.edge import pins
from pxo.edge.kernel import Kernel
from pxo.edge.loader import NodeKernel, load, node_kernel
from pxo.edge.pins import PinnedProgram

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
    return pins.bpf_dir()


def load_program(name: str, *, kernel: Kernel, settings: Mapping[str, int] | None = None) -> PinnedProgram:
    """bpf/<name>.bpf.c for ``kernel``, loaded, attached and pinned: the programs pinned by an
    earlier edge when they are what would be loaded now, else compiled by pxo's loader in a
    helper process (edge/loader.py); the result offers what BCC's BPF object offered the
    sources (``[map]``, ``detach_raw_tracepoint``, ``cleanup``), over libbpf.

    ``kernel`` comes from SourceContext.kernel(), which has checked the node's prerequisites;
    every struct offset goes to the program as a -D flag next to the program's own ``settings``.
    Any failure is a PrerequisiteError with one clear sentence.
    """
    if not isinstance(kernel, NodeKernel):  # a Kernel parsed here: its node's pins, at the default place
        kernel = node_kernel(kernel.btf_path)
    flags = {**kernel.offsets, **(settings or {})}
    return load(name, kernel=kernel, flags=flags)


def read_counter(bpf: Any, array: str) -> int:
    """Value of a one-slot BPF_ARRAY(u64) counter such as a program's lost-event count."""
    return int(bpf[array][ctypes.c_int(0)].value)
