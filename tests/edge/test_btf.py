"""The BTF reader against a blob whose layout we wrote by hand, and against
the running kernel."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pxo.edge.btf import VMLINUX, Btf, BtfError


class BtfBuilder:
    def __init__(self) -> None:
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, kind: int, name: str, vlen: int, size_or_type: int, tail: bytes = b"", kflag: int = 0) -> int:
        self.types += struct.pack("<III", self.s(name), (kflag << 31) | (kind << 24) | vlen, size_or_type) + tail
        self.count += 1
        return self.count

    def members(self, *ms: tuple[str, int, int]) -> bytes:
        return b"".join(struct.pack("<III", self.s(n), t, off) for n, t, off in ms)

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + self.types + self.strings


def sample() -> Btf:
    b = BtfBuilder()
    i32 = b.add(1, "int", 0, 4, struct.pack("<I", 32))
    inner = b.add(4, "inner", 2, 8, b.members(("a", i32, 0), ("b", i32, 32)))
    anon = b.add(5, "", 1, 8, b.members(("x", i32, 0)))
    typedef = b.add(8, "inner_t", 0, inner)
    arr = b.add(3, "", 0, 0, struct.pack("<III", inner, i32, 4))
    b.add(4, "outer", 4, 56, b.members(("first", i32, 0), ("", anon, 64), ("nested", typedef, 128),
                                       ("arr", arr, 192)))
    b.add(6, "", 2, 4, struct.pack("<Ii", b.s("E_A"), 0) + struct.pack("<Ii", b.s("E_B"), 5))
    b.add(4, "bits", 1, 4, b.members(("flag", i32, (1 << 24) | 3)), kflag=1)
    # What the kernel declares for each tracepoint: typedef void (*btf_trace_x)(void *, <TP_PROTO>);
    void_ptr = b.add(2, "", 0, 0)
    task = b.add(4, "task_struct", 0, 0)
    task_ptr = b.add(2, "", 0, task)
    uid_t = b.add(8, "uid_t", 0, i32)
    proto = b.add(13, "", 3, 0, struct.pack("<IIIIII", 0, void_ptr, 0, task_ptr, 0, uid_t))
    b.add(8, "btf_trace_mark_victim", 0, b.add(2, "", 0, proto))
    return Btf(b.blob())


def test_raw_tracepoint_arguments_from_the_btf_trace_typedef() -> None:
    btf = sample()
    assert btf.raw_tracepoint_args("mark_victim") == ("struct task_struct *", "uid_t")
    assert btf.raw_tracepoint_args("no_such_event") is None


def test_offsets_through_anonymous_members_typedefs_and_nesting() -> None:
    btf = sample()
    assert btf.offset("outer", "first") == 0
    assert btf.offset("outer", "x") == 8  # inside the anonymous union at bit 64
    assert btf.offset("outer", "nested") == 16
    assert btf.offset("outer", "nested.b") == 20  # through a typedef to struct inner
    assert btf.sizeof("outer") == 56
    assert btf.array_member("outer", "arr") == ("inner", 4)
    assert btf.enumerator("E_B") == 5
    assert btf.has_member("outer", "x") and not btf.has_member("outer", "y")


def test_refusals_are_clear() -> None:
    btf = sample()
    with pytest.raises(BtfError, match="no struct nosuch"):
        btf.offset("nosuch", "a")
    with pytest.raises(BtfError, match="no member 'zz'"):
        btf.offset("outer", "zz")
    with pytest.raises(BtfError, match="bitfield"):
        btf.offset("bits", "flag")
    with pytest.raises(BtfError, match="not an array"):
        btf.array_member("outer", "first")
    with pytest.raises(BtfError, match="not BTF"):
        Btf(b"\0" * 64)
    with pytest.raises(BtfError, match="without BTF"):
        Btf.load(Path("/nonexistent/vmlinux"))


@pytest.mark.skipif(not VMLINUX.exists(), reason="the kernel has no BTF")
def test_running_kernel() -> None:
    btf = Btf.load()
    # pid_t pid; pid_t tgid; have been adjacent in task_struct for decades.
    assert btf.offset("task_struct", "tgid") == btf.offset("task_struct", "pid") + 4
    assert 0 < btf.offset("task_struct", "comm") < btf.sizeof("task_struct")
    assert btf.enumerator("MM_ANONPAGES") == 1
    assert btf.has_member("kernfs_node", "__parent") or btf.has_member("kernfs_node", "parent")
    # The hooks pxo's programs use, as this kernel passes them (no tracefs involved).
    assert btf.raw_tracepoint_args("mm_page_alloc") == ("struct page *", "unsigned int", "gfp_t", "int")
    assert btf.raw_tracepoint_args("signal_generate") == (
        "int", "struct kernel_siginfo *", "struct task_struct *", "int", "int")
    assert btf.raw_tracepoint_args("mark_victim") in (("struct task_struct *", "uid_t"), ("int",))


@pytest.mark.skipif(not VMLINUX.exists(), reason="the kernel has no BTF")
def test_the_edges_facts_answer_as_the_parsed_btf_does_without_parsing_it() -> None:
    """FactsBtf (edge/loader.py) is what a running edge asks instead of parsing BTF (about
    100 MiB): it answers the helpers the sources ask for and refuses unknown ones itself;
    any other enumerator falls back to parsing, and gives the same answer."""
    import platform

    from pxo.edge.kernel import Kernel
    from pxo.edge.loader import RECORDED_ENUMERATORS, FactsBtf, facts_of

    btf = Btf.load()
    facts = FactsBtf(facts_of(Kernel(platform.release(), btf)), VMLINUX)
    helpers = [n for n in btf._enumerators if n.startswith(RECORDED_ENUMERATORS)]
    assert "BPF_FUNC_ringbuf_output" in helpers
    for name in helpers:
        assert facts.has_enumerator(name) and facts.enumerator(name) == btf.enumerator(name)
    assert not facts.has_enumerator("BPF_FUNC_no_such_helper")
    with pytest.raises(BtfError, match="no enumerator BPF_FUNC_no_such_helper"):
        facts.enumerator("BPF_FUNC_no_such_helper")
    assert facts.raw_tracepoint_args("mm_page_alloc") == btf.raw_tracepoint_args("mm_page_alloc")
    assert facts._parsed is None  # all of it answered from the facts
    assert facts.enumerator("MM_ANONPAGES") == btf.enumerator("MM_ANONPAGES")  # not recorded: parsed
    assert facts._parsed is not None
