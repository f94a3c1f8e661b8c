"""Loading pxo's BPF programs: one mechanism for every eBPF source.

- ``load_program("oom", ...)`` checks the node's prerequisites, computes every
  struct member offset the programs use from the running kernel's BTF (never
  from headers, which may belong to another kernel), passes them with the
  program's own settings as ``-D`` flags, and compiles ``bpf/<name>.bpf.c``
  with BCC. Any failure is a PrerequisiteError with one clear sentence.
- ``SharedStruct`` is the base of every ctypes mirror of a struct in a
  ``bpf/*.h`` header; tests/edge/test_bpf_layout.py finds every subclass and
  has the BPF compiler check its size and offsets field by field.
- ``CgroupC`` mirrors ``struct pxo_cgroup`` (bpf/cgroup.h), the cgroup record
  every program shares.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import functools
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pxo.bpf
from pxo.edge import prereqs
from pxo.edge.btf import VMLINUX, Btf, BtfError
from pxo.edge.errors import PrerequisiteError

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
    """A bpf_ktime_get_boot_ns() stamp in UTC, using the clocks as they are now."""
    now_real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    now_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    unix_ns = now_real - (now_boot - boot_ns)
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=unix_ns // 1000)


@functools.lru_cache(maxsize=4)
def kernel_offsets(btf_path: Path = VMLINUX) -> dict[str, int]:
    """Every struct offset and enum value pxo's programs use, from the running kernel's BTF.

    Computed once per process (parsing BTF takes a few hundred milliseconds).
    """
    btf = Btf.load(btf_path)
    counter_type, _n = btf.array_member("mm_struct", "rss_stat")
    if counter_type == "percpu_counter":  # kernel >= 6.2
        counter_size = btf.sizeof("percpu_counter")
        counter_count = btf.offset("percpu_counter", "count")
        rss_stat = btf.offset("mm_struct", "rss_stat")
    else:  # older kernels: struct mm_rss_stat { atomic_long_t count[]; }
        counter_size, counter_count = 8, 0
        rss_stat = btf.offset("mm_struct", "rss_stat") + btf.offset("mm_rss_stat", "count")
    parent = "__parent" if btf.has_member("kernfs_node", "__parent") else "parent"  # renamed in 6.15
    memory_id = (
        btf.enum_value("cgroup_subsys_id", "memory_cgrp_id") if btf.has_enumerator("memory_cgrp_id") else -1
    )
    return {
        "TASK_PID": btf.offset("task_struct", "pid"),
        "TASK_TGID": btf.offset("task_struct", "tgid"),
        "TASK_COMM": btf.offset("task_struct", "comm"),
        "TASK_MM": btf.offset("task_struct", "mm"),
        "TASK_SIGNAL": btf.offset("task_struct", "signal"),
        "TASK_CGROUPS": btf.offset("task_struct", "cgroups"),
        "TASK_REAL_PARENT": btf.offset("task_struct", "real_parent"),
        "TASK_EXIT_CODE": btf.offset("task_struct", "exit_code"),
        "TASK_FLAGS": btf.offset("task_struct", "flags"),
        "TASK_GROUP_LEADER": btf.offset("task_struct", "group_leader"),
        "SIGNAL_GROUP_EXIT_CODE": btf.offset("signal_struct", "group_exit_code"),
        "SIGNAL_OOM_SCORE_ADJ": btf.offset("signal_struct", "oom_score_adj"),
        "MM_TOTAL_VM": btf.offset("mm_struct", "total_vm"),
        "MM_PGTABLES_BYTES": btf.offset("mm_struct", "pgtables_bytes"),
        "MM_RSS_STAT": rss_stat,
        "RSS_COUNTER_SIZE": counter_size,
        "RSS_COUNTER_COUNT": counter_count,
        "MM_FILEPAGES": btf.enumerator("MM_FILEPAGES"),
        "MM_ANONPAGES": btf.enumerator("MM_ANONPAGES"),
        "MM_SWAPENTS": btf.enumerator("MM_SWAPENTS"),
        "MM_SHMEMPAGES": btf.enumerator("MM_SHMEMPAGES"),
        "CSS_SET_DFL_CGRP": btf.offset("css_set", "dfl_cgrp"),
        "CSS_SET_SUBSYS": btf.offset("css_set", "subsys"),
        "CSS_CGROUP": btf.offset("cgroup_subsys_state", "cgroup"),
        "CGROUP_KN": btf.offset("cgroup", "kn"),
        "KERNFS_NODE_ID": btf.offset("kernfs_node", "id"),
        "KERNFS_NODE_NAME": btf.offset("kernfs_node", "name"),
        "KERNFS_NODE_PARENT": btf.offset("kernfs_node", parent),
        "MEMORY_CGRP_ID": memory_id,
        "KERNEL_SIGINFO_CODE": btf.offset("kernel_siginfo", "si_code"),
    }


def bpf_dir() -> Path:
    """Where bpf/*.bpf.c and their headers are (the pxo.bpf data package)."""
    for p in pxo.bpf.__path__:
        if (Path(p) / "cgroup.h").is_file():
            return Path(p)
    raise PrerequisiteError("pxo's BPF sources (bpf/*.bpf.c) are not installed with the package")


def require_tracepoint(category: str, event: str, *, field: str = "") -> None:
    """Refuse clearly when the kernel lacks a tracepoint (or a field of it) a program hooks."""
    fmt = prereqs.tracepoint_format(category, event)
    if fmt is None or (field and f" {field};" not in fmt and f" {field}[" not in fmt):
        what = f"{category}:{event}" + (f" with its {field} field" if field else "")
        raise PrerequisiteError(f"kernel {platform.release()} lacks the tracepoint {what}")


def load_program(name: str, *, settings: Mapping[str, int] | None = None, btf_path: Path = VMLINUX) -> Any:
    """Compile and load bpf/<name>.bpf.c; returns the bcc.BPF object (probes auto-attached)."""
    prereqs.require_bpf(btf_path=btf_path)
    try:
        flags = dict(kernel_offsets(btf_path))
    except BtfError as exc:
        raise PrerequisiteError(f"cannot take struct offsets from BTF: {exc}") from exc
    flags.update(settings or {})
    src = bpf_dir()
    cflags = [f"-D{k}={v}" for k, v in flags.items()] + [f"-I{src}"]
    from bcc import BPF  # heavy, and only the edge needs it

    try:
        bpf = BPF(src_file=str(src / f"{name}.bpf.c"), cflags=cflags)
    except Exception as exc:  # bcc raises a plain Exception on compile or load failure
        raise PrerequisiteError(f"the kernel refused bpf/{name}.bpf.c: {exc}") from exc
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # the compiler's freed heap, before the next program compiles
    log.info("bpf/%s.bpf.c loaded (struct offsets from %s)", name, btf_path)
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

