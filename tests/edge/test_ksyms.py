"""Reading an OOM victim's kernel stack: the path it was killed on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pxo.edge.ksyms import KernelSymbols, StackVerdict

# A made-up kernel: each function 0x100 bytes long, in this order.
FUNCS = ["bpf_trace_run2", "__bpf_trace_mark_victim", "mark_oom_victim", "__oom_kill_process",
         "oom_kill_process", "oom_kill_memcg_member", "mem_cgroup_scan_tasks", "out_of_memory",
         "mem_cgroup_out_of_memory", "try_charge_memcg", "__alloc_pages_may_oom", "__alloc_pages_slowpath",
         "handle_mm_fault"]
BASE = 0xFFFFFFFF81000000


def addr(name: str, offset: int = 0x20) -> int:
    return BASE + 0x100 * FUNCS.index(name) + offset


def kallsyms(tmp_path: Path, *, hide: tuple[str, ...] = ()) -> Path:
    p = tmp_path / "kallsyms"
    p.write_text("".join(f"{BASE + 0x100 * i:016x} t {n}\n" for i, n in enumerate(FUNCS) if n not in hide)
                 + f"{BASE + 0x100 * len(FUNCS):016x} T _etext\n" + "0000000000000000 d some_data\n")
    return p


def stack(*names: str) -> list[int]:
    return [addr(n) for n in ("bpf_trace_run2", "__bpf_trace_mark_victim", *names, "handle_mm_fault")]


def test_chosen_victim_of_a_memcg_oom(tmp_path: Path) -> None:
    syms = KernelSymbols.load(kallsyms(tmp_path))
    v = syms.verdict(stack("mark_oom_victim", "__oom_kill_process", "oom_kill_process", "out_of_memory",
                           "mem_cgroup_out_of_memory", "try_charge_memcg"))
    assert v == StackVerdict(killed=True, member=False, memcg=True)


def test_member_of_a_group_kill_on_a_node_oom(tmp_path: Path) -> None:
    syms = KernelSymbols.load(kallsyms(tmp_path))
    v = syms.verdict(stack("__oom_kill_process", "oom_kill_memcg_member", "mem_cgroup_scan_tasks",
                           "oom_kill_process", "out_of_memory", "__alloc_pages_may_oom", "__alloc_pages_slowpath"))
    assert v == StackVerdict(killed=True, member=True, memcg=False)


def test_a_task_already_exiting_is_marked_but_not_killed(tmp_path: Path) -> None:
    syms = KernelSymbols.load(kallsyms(tmp_path))
    v = syms.verdict(stack("mark_oom_victim", "out_of_memory", "mem_cgroup_out_of_memory"))
    assert v.killed is False and v.memcg is True


def test_inlined_functions_fall_back_to_what_is_there(tmp_path: Path) -> None:
    # mem_cgroup_out_of_memory inlined into try_charge_memcg; __oom_kill_process into oom_kill_process
    syms = KernelSymbols.load(kallsyms(tmp_path, hide=("mem_cgroup_out_of_memory", "__oom_kill_process")))
    v = syms.verdict([addr("oom_kill_process"), addr("out_of_memory"), addr("try_charge_memcg")])
    assert v == StackVerdict(killed=True, member=False, memcg=True)


def test_a_return_address_at_the_end_of_its_caller_still_counts(tmp_path: Path) -> None:
    syms = KernelSymbols.load(kallsyms(tmp_path))
    v = syms.verdict([addr("__oom_kill_process"), addr("out_of_memory", 0x100), addr("mem_cgroup_out_of_memory")])
    assert v.killed is True  # out_of_memory's last byte is its call; the return address is the next function


def test_no_symbols_no_verdict(tmp_path: Path) -> None:
    (tmp_path / "zeros").write_text("0000000000000000 t out_of_memory\n")  # kernel.kptr_restrict hides them
    for syms in (KernelSymbols.load(tmp_path / "zeros"), KernelSymbols.load(tmp_path / "absent")):
        assert syms.verdict(stack("out_of_memory")) == StackVerdict(None, None, None)


@pytest.mark.requires_bpf  # root: /proc/kallsyms shows zeros to others
def test_this_kernel_has_the_oom_path_functions() -> None:
    syms = KernelSymbols.load()
    assert syms.has("out_of_memory") and syms.has("oom_kill_memcg_member")
