"""What the running kernel offers pxo's programs, read from its BTF alone.

Version numbers are the wrong guide (Debian carries ``mark_victim``'s task
argument back to 5.10; other distributions' 5.15 lack it), and tracefs is
not mounted on many fresh nodes. BTF is always there when eBPF can work:

- **hooks**: for every tracepoint the kernel declares
  ``typedef void (*btf_trace_<event>)(void *, <TP_PROTO>)``: exactly what a
  raw tracepoint program finds in ``ctx->args[]`` on this kernel. Every pxo
  program hooks raw tracepoints, so nothing needs tracefs.
- **struct offsets** for every member a program reads (``offsets()``), passed
  to the programs as ``-D`` flags: the headers BCC compiles with may belong to
  another kernel.
- **helpers**: ``BPF_FUNC_<name>`` enumerators say which helpers the verifier
  knows (``bpf_get_current_task_btf`` arrived in 5.11).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass, field
from pathlib import Path

from pxo.edge import prereqs
from pxo.edge.btf import VMLINUX, Btf, BtfError
from pxo.edge.errors import PrerequisiteError


@dataclass(frozen=True)
class Kernel:
    """The running kernel as its BTF describes it."""

    release: str
    btf: Btf = field(repr=False)
    btf_path: Path = VMLINUX

    def hook(self, event: str) -> tuple[str, ...] | None:
        """The C types of what a raw tracepoint on ``event`` passes; None when there is no such tracepoint."""
        return self.btf.raw_tracepoint_args(event)

    def require_hook(self, event: str, *forms: tuple[str, ...]) -> tuple[str, ...]:
        """The arguments of ``event``, which must be one of ``forms`` (any, when none is given).

        Refuses with one sentence naming the kernel, the tracepoint and what it passes instead.
        """
        args = self.hook(event)
        if args is None:
            raise PrerequisiteError(f"kernel {self.release} has no tracepoint {event} (no btf_trace_{event} in "
                                    f"its BTF)")
        if forms and args not in forms:
            want = " or ".join(f"({', '.join(f)})" for f in forms)
            raise PrerequisiteError(f"kernel {self.release}'s tracepoint {event} passes ({', '.join(args)}), "
                                    f"not {want} as pxo reads it")
        return args

    def has_helper(self, name: str) -> bool:
        """Does the verifier of this kernel know bpf_<name>()?"""
        return self.btf.has_enumerator(f"BPF_FUNC_{name}")

    @functools.cached_property
    def offsets(self) -> dict[str, int]:
        """Every struct offset and enum value pxo's programs use (``-D`` flags)."""
        try:
            return _offsets(self.btf)
        except BtfError as exc:
            raise PrerequisiteError(f"cannot take struct offsets from kernel {self.release}'s BTF: {exc}") from exc


def _rss_stat(btf: Btf) -> dict[str, int]:
    """Where the mm's resident-page counters are, and how big each one is.

    6.2 and later: ``struct percpu_counter rss_stat[NR_MM_COUNTERS]``, the
    approximate total in each counter's ``count`` (what get_mm_counter()
    reads). Before: ``struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; } rss_stat``.
    """
    base = btf.offset("mm_struct", "rss_stat")
    if btf.member_is_array("mm_struct", "rss_stat"):
        elem, _n = btf.array_member("mm_struct", "rss_stat")
        if elem != "percpu_counter":
            raise BtfError(f"mm_struct.rss_stat is an array of {elem}, not of percpu_counter")
        return {"MM_RSS_STAT": base, "RSS_COUNTER_SIZE": btf.sizeof("percpu_counter"),
                "RSS_COUNTER_COUNT": btf.offset("percpu_counter", "count")}
    elem, _n = btf.array_member("mm_rss_stat", "count")  # atomic_long_t: one long each
    return {"MM_RSS_STAT": base + btf.offset("mm_rss_stat", "count"), "RSS_COUNTER_SIZE": 8,
            "RSS_COUNTER_COUNT": 0}


def _offsets(btf: Btf) -> dict[str, int]:
    parent = "__parent" if btf.has_member("kernfs_node", "__parent") else "parent"  # renamed in 6.15
    memory_id = (
        btf.enum_value("cgroup_subsys_id", "memory_cgrp_id") if btf.has_enumerator("memory_cgrp_id") else -1
    )
    # v1's memory+swap counter: absent from kernels built without cgroup v1 memory (CONFIG_MEMCG_V1)
    memsw = btf.offset("mem_cgroup", "memsw") if btf.has_member("mem_cgroup", "memsw") else -1
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
        "TASK_START_TIME": btf.offset("task_struct", "start_time"),
        "SIGNAL_GROUP_EXIT_CODE": btf.offset("signal_struct", "group_exit_code"),
        "SIGNAL_OOM_SCORE_ADJ": btf.offset("signal_struct", "oom_score_adj"),
        "SIGNAL_LIVE": btf.offset("signal_struct", "live"),
        "SIGNAL_FLAGS": btf.offset("signal_struct", "flags"),
        "MM_TOTAL_VM": btf.offset("mm_struct", "total_vm"),
        "MM_PGTABLES_BYTES": btf.offset("mm_struct", "pgtables_bytes"),
        **_rss_stat(btf),
        "MM_FILEPAGES": btf.enumerator("MM_FILEPAGES"),
        "MM_ANONPAGES": btf.enumerator("MM_ANONPAGES"),
        "MM_SWAPENTS": btf.enumerator("MM_SWAPENTS"),
        "MM_SHMEMPAGES": btf.enumerator("MM_SHMEMPAGES"),
        "CSS_SET_DFL_CGRP": btf.offset("css_set", "dfl_cgrp"),
        "CSS_SET_SUBSYS": btf.offset("css_set", "subsys"),
        "CSS_CGROUP": btf.offset("cgroup_subsys_state", "cgroup"),
        "CSS_PARENT": btf.offset("cgroup_subsys_state", "parent"),
        "CGROUP_KN": btf.offset("cgroup", "kn"),
        "KERNFS_NODE_ID": btf.offset("kernfs_node", "id"),
        "KERNFS_NODE_NAME": btf.offset("kernfs_node", "name"),
        "KERNFS_NODE_PARENT": btf.offset("kernfs_node", parent),
        "MEMORY_CGRP_ID": memory_id,
        # struct mem_cgroup begins with its css (container_of(css, struct mem_cgroup, css))
        "MEMCG_CSS": btf.offset("mem_cgroup", "css"),
        "MEMCG_MEMORY": btf.offset("mem_cgroup", "memory"),
        "MEMCG_MEMSW": memsw,
        "MEMCG_OOM_GROUP": btf.offset("mem_cgroup", "oom_group"),
        "MEMCG_EVENTS_LOCAL": btf.offset("mem_cgroup", "memory_events_local"),
        "MEMCG_EVENT_OOM": btf.enum_value("memcg_memory_event", "MEMCG_OOM"),
        "PAGE_COUNTER_USAGE": btf.offset("page_counter", "usage"),
        "PAGE_COUNTER_MAX": btf.offset("page_counter", "max"),
        "KERNEL_SIGINFO_CODE": btf.offset("kernel_siginfo", "si_code"),
    }


@functools.lru_cache(maxsize=4)
def _load(btf_path: Path, release: str) -> Kernel:
    return Kernel(release, Btf.load(btf_path), btf_path)


def running_kernel(btf_path: Path = VMLINUX) -> Kernel:
    """The running kernel, once the node has what eBPF needs.

    Checks the prerequisites first, in the order a person fixes them (root,
    BTF, BCC, kernel headers), so that the message names the real cause; then
    parses BTF (a few hundred milliseconds, once per process).
    """
    prereqs.require_bpf(btf_path=btf_path)
    try:
        return _load(btf_path, platform.release())
    except BtfError as exc:
        raise PrerequisiteError(f"cannot read the kernel's BTF: {exc}") from exc
