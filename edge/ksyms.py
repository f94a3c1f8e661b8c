"""Reading the kernel stack of an OOM kill: who killed, and why.

bpf/oom.bpf.c sends the kernel stack at ``mark_victim``. Two questions are
answered from it, because nothing else the kernel gives at that moment does
and the kernel log's answer is rate-limited:

- **a memory cgroup or the node?** ``out_of_memory()`` is called by
  ``mem_cgroup_out_of_memory()`` (a cgroup hit its limit; inlined on some
  kernels into ``mem_cgroup_oom``/``try_charge_memcg``/``try_charge``, or
  reached through ``mem_cgroup_oom_synchronize`` for cgroup v1's deferred
  OOM) or by the page allocator's ``__alloc_pages_may_oom()`` (the node ran
  out; the constraint is global, cpuset or mempolicy), by
  ``pagefault_out_of_memory()`` (older kernels) or sysrq's ``moom_callback()``.
- **the chosen victim or a group member?** members of a memory.oom.group
  kill are killed from ``oom_kill_memcg_member()``, which the kernel passes
  as a function pointer (so it is never inlined).
- **a kill at all?** ``out_of_memory()`` marks a task that is already exiting
  as a victim without killing anything (``task_will_free_mem``); a real kill
  goes through ``__oom_kill_process()``.

Only these functions' address ranges are kept, read once from
/proc/kallsyms (about 0.15 s; nothing of the 120,000 symbols stays in memory).
"""

from __future__ import annotations

import array
import bisect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KILL = ("__oom_kill_process",)
OOM_KILL_PROCESS = ("oom_kill_process",)
OUT_OF_MEMORY = ("out_of_memory",)
MEMBER = ("oom_kill_memcg_member",)
MEMCG_CALLERS = ("mem_cgroup_out_of_memory", "mem_cgroup_oom", "try_charge_memcg", "try_charge",
                 "mem_cgroup_oom_synchronize")
NODE_CALLERS = ("__alloc_pages_may_oom", "__alloc_pages_slowpath", "pagefault_out_of_memory", "moom_callback")
WANTED = frozenset(KILL + OOM_KILL_PROCESS + OUT_OF_MEMORY + MEMBER + MEMCG_CALLERS + NODE_CALLERS)


@dataclass(frozen=True)
class StackVerdict:
    """What an OOM victim's kernel stack says; None where it cannot tell."""

    killed: bool | None  # False: marked because it was already exiting, nothing killed
    member: bool | None  # killed as a member of a memory.oom.group kill, not chosen
    memcg: bool | None  # a memory cgroup's limit (True) or the node (False) ran out


class KernelSymbols:
    """The address ranges of the OOM path's functions in the running kernel."""

    def __init__(self, ranges: dict[str, list[tuple[int, int]]]) -> None:
        self.ranges = ranges  # name -> [(start, end)], ".cold" parts included

    @classmethod
    def load(cls, path: Path = Path("/proc/kallsyms"), wanted: Iterable[str] = WANTED) -> KernelSymbols:
        """Read ``path`` once. Addresses are zero without the privilege to see them
        (kernel.kptr_restrict): then nothing is found and every verdict is None."""
        want = frozenset(wanted)
        starts: list[tuple[str, int]] = []
        addrs = array.array("Q")
        try:
            with path.open("rb") as f:
                for line in f:
                    parts = line.split(None, 3)
                    if len(parts) < 3 or parts[1] not in (b"t", b"T"):
                        continue
                    addr = int(parts[0], 16)
                    addrs.append(addr)
                    name = parts[2].decode(errors="replace")
                    base = name.split(".", 1)[0]  # __oom_kill_process.cold is part of it
                    if base in want and addr:
                        starts.append((base, addr))
        except OSError as exc:
            log.info("cannot read %s (%s): OOM kills are explained from the kernel log and cgroups only",
                     path, exc.strerror)
            return cls({})
        ordered = sorted(set(addrs))
        ranges: dict[str, list[tuple[int, int]]] = {}
        for base, start in starts:
            i = bisect.bisect_right(ordered, start)
            end = ordered[i] if i < len(ordered) else start + 1
            ranges.setdefault(base, []).append((start, end))
        return cls(ranges)

    def has(self, name: str) -> bool:
        return name in self.ranges

    def name_of(self, addr: int) -> str | None:
        """The wanted function containing ``addr``, or None."""
        for name, spans in self.ranges.items():
            for lo, hi in spans:
                if lo <= addr < hi:
                    return name
        return None

    def verdict(self, stack: Sequence[int]) -> StackVerdict:
        """Read a kernel stack (return addresses, innermost first)."""
        if not self.ranges or not stack:
            return StackVerdict(None, None, None)
        # A return address points just past its call, which may be the last
        # byte of the caller: look up the byte before it.
        names = [n for a in stack if a and (n := self.name_of(a - 1)) is not None]
        member = any(n in MEMBER for n in names) if self.has("oom_kill_memcg_member") else None
        killed: bool | None = None
        if "out_of_memory" in names:
            inner = names[: names.index("out_of_memory")]
            if any(n in KILL for n in inner):
                killed = True
            elif self.has("__oom_kill_process"):  # not inlined here: its absence means no kill
                killed = False
            elif any(n in OOM_KILL_PROCESS for n in inner):
                killed = True  # __oom_kill_process inlined into oom_kill_process (or its early exit)
        memcg: bool | None = None
        if "out_of_memory" in names:
            for n in names[names.index("out_of_memory") + 1:]:
                if n in MEMCG_CALLERS:
                    memcg = True
                    break
                if n in NODE_CALLERS:
                    memcg = False
                    break
        return StackVerdict(killed, member, memcg)
