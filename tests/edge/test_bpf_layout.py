"""Every struct a bpf/*.h header shares with user space has the same layout on
both sides: the BPF compiler itself checks each ctypes mirror, field by field."""

from __future__ import annotations

import ctypes
import importlib
import pkgutil

import pytest

import pxo.edge.sources
from pxo.edge.bpf import SharedStruct, bpf_dir
from pxo.edge.kernel import running_kernel

pytestmark = pytest.mark.requires_bpf


def mirrors() -> list[type[SharedStruct]]:
    for mod in pkgutil.iter_modules(pxo.edge.sources.__path__):
        importlib.import_module(f"pxo.edge.sources.{mod.name}")
    found, todo = [], list(SharedStruct.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda c: c.__name__)


def layout_asserts(c_name: str, mirror: type[ctypes.Structure], fields: list[str] | None = None) -> list[str]:
    lines = [f'_Static_assert(sizeof(struct {c_name}) == {ctypes.sizeof(mirror)}, "size of {c_name}");']
    for name in fields or [f[0] for f in mirror._fields_]:
        off = getattr(mirror, name).offset
        lines.append(f'_Static_assert(__builtin_offsetof(struct {c_name}, {name}) == {off}, '
                     f'"{c_name}.{name} at {off}");')
    return lines


def compile_text(text: str) -> None:
    from bcc import BPF

    flags = [f"-D{k}={v}" for k, v in running_kernel().offsets.items()]
    BPF(text=text, cflags=[f"-I{bpf_dir()}", *flags]).cleanup()


def test_every_shared_struct_is_found() -> None:
    names = {m.c_struct for m in mirrors()}
    assert {"pxo_cgroup", "oom_event", "pxo_memcg_level"} <= names
    for m in mirrors():
        assert m.c_header and m.c_struct, m


@pytest.mark.parametrize("mirror", mirrors(), ids=lambda m: m.c_struct)
def test_layout_matches_the_c_header(mirror: type[SharedStruct]) -> None:
    compile_text(f'#include "{mirror.c_header}"\n' + "\n".join(layout_asserts(mirror.c_struct, mirror)))


def test_a_mismatch_is_caught(capfd: pytest.CaptureFixture[str]) -> None:
    class Skewed(ctypes.Structure):
        _fields_ = [("boot_ns", ctypes.c_uint64), ("victim_tid", ctypes.c_uint32)]  # tgid comes first

    with pytest.raises(Exception, match="Failed to compile"):
        compile_text('#include "oom.h"\n' + "\n".join(layout_asserts("oom_event", Skewed, ["victim_tid"])[1:]))
    assert "oom_event.victim_tid at 8" in capfd.readouterr().err  # clang's own words
