"""Struct member offsets from the running kernel's BTF.

The kernel headers BCC compiles against may come from another kernel (see
DESIGN.md: Debian's 6.1 headers on a 6.18 kernel), so their struct layouts are
not trusted. Every member offset a BPF program needs is read here from
``/sys/kernel/btf/vmlinux`` and handed to the program as a ``-D`` flag.

The format is documented in the kernel's ``Documentation/bpf/btf.rst``: a
header, a type section (records of ``struct btf_type`` followed by a
kind-specific tail) and a string section. Only what offset lookups need is
decoded: names, sizes, struct/union members, arrays, enums, and the modifier
chain (typedef/const/volatile/...) to reach a member's real type.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pxo.edge.errors import EdgeError

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
# BTF kinds (include/uapi/linux/btf.h).
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}


class BtfError(EdgeError):
    """BTF is missing, malformed, or lacks a type or member a probe needs."""


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM, referenced type id otherwise
    members: tuple[tuple[str, int, int], ...] = ()  # (name, type id, bit offset)
    array: tuple[int, int] | None = None  # (element type id, number of elements)
    enumerators: tuple[tuple[str, int], ...] = ()
    params: tuple[int, ...] = ()  # FUNC_PROTO: the parameters' type ids (0: "...")


class Btf:
    """Decoded type information of one BTF blob (normally the running kernel's)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF data is too short to hold a header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != _MAGIC:
            raise BtfError(f"not BTF data (magic {magic:#x}, expected {_MAGIC:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        types = memoryview(data)[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strings = bytes(data[hdr_len + str_off : hdr_len + str_off + str_len])
        self._types: list[_Type | None] = [None]  # type id 0 is "void"
        self._by_name: dict[tuple[int, str], int] = {}
        self._enumerators: dict[str, int] = {}  # every enumerator, named enums or not
        self._parse(types)

    @classmethod
    def load(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except FileNotFoundError as exc:
            raise BtfError(
                f"{path} does not exist: this kernel was built without BTF "
                "(CONFIG_DEBUG_INFO_BTF), so struct offsets cannot be taken from it"
            ) from exc
        except PermissionError as exc:
            raise BtfError(f"cannot read {path}: permission denied (run as root)") from exc

    # -- decoding -------------------------------------------------------------

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _parse(self, buf: memoryview) -> None:
        pos, n = 0, len(buf)
        unpack = struct.unpack_from
        while pos < n:
            name_off, info, size_or_type = unpack("<III", buf, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = info >> 31
            name = self._str(name_off) if name_off else ""
            members: tuple[tuple[str, int, int], ...] = ()
            array = None
            enumerators: tuple[tuple[str, int], ...] = ()
            params: tuple[int, ...] = ()
            if kind in (_INT, _VAR, _DECL_TAG):
                pos += 4
            elif kind == _ARRAY:
                elem, _index, nelems = unpack("<III", buf, pos)
                array = (elem, nelems)
                pos += 12
            elif kind in (_STRUCT, _UNION):
                ms = []
                for _ in range(vlen):
                    m_name, m_type, m_off = unpack("<III", buf, pos)
                    pos += 12
                    bit_off = m_off & 0xFFFFFF if kind_flag else m_off
                    ms.append((self._str(m_name) if m_name else "", m_type, bit_off))
                members = tuple(ms)
            elif kind == _ENUM:
                es = []
                for _ in range(vlen):
                    e_name, e_val = unpack("<Ii", buf, pos)
                    pos += 8
                    es.append((self._str(e_name), e_val))
                enumerators = tuple(es)
            elif kind == _ENUM64:
                es = []
                for _ in range(vlen):
                    e_name, lo, hi = unpack("<III", buf, pos)
                    pos += 12
                    es.append((self._str(e_name), (hi << 32) | lo))
                enumerators = tuple(es)
            elif kind == _FUNC_PROTO:
                params = tuple(unpack("<II", buf, pos + 8 * i)[1] for i in range(vlen))
                pos += 8 * vlen
            elif kind == _DATASEC:
                pos += 12 * vlen
            elif kind not in (_PTR, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC,
                              _FLOAT, _TYPE_TAG):
                raise BtfError(f"unknown BTF kind {kind} at type id {len(self._types)}")
            type_id = len(self._types)
            self._types.append(_Type(kind, name, size_or_type, members, array, enumerators, params))
            if name and kind in (_STRUCT, _UNION, _ENUM, _ENUM64, _TYPEDEF):
                self._by_name.setdefault((kind, name), type_id)
            for e_name, e_val in enumerators:
                self._enumerators.setdefault(e_name, e_val)

    # -- lookups --------------------------------------------------------------

    def _struct(self, name: str) -> _Type:
        for kind in (_STRUCT, _UNION):
            tid = self._by_name.get((kind, name))
            if tid is not None:
                return self._resolve(tid)
        raise BtfError(f"the running kernel's BTF has no struct {name}")

    def _resolve(self, tid: int) -> _Type:
        """Follow typedef/const/volatile/... to the underlying type."""
        t = self._types[tid]
        while t is not None and t.kind in _MODIFIERS:
            t = self._types[t.size_or_type]
        if t is None:
            raise BtfError("member has type void")
        return t

    def _find_member(self, t: _Type, member: str) -> tuple[int, int] | None:
        """(bit offset, type id) of ``member``, looking inside anonymous members."""
        for m_name, m_type, bit_off in t.members:
            if m_name == member:
                return bit_off, m_type
            if not m_name:
                inner = self._resolve(m_type)
                if inner.kind in (_STRUCT, _UNION):
                    found = self._find_member(inner, member)
                    if found is not None:
                        return bit_off + found[0], found[1]
        return None

    def has_member(self, struct_name: str, member: str) -> bool:
        return self._find_member(self._struct(struct_name), member) is not None

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``member`` in ``struct struct_name``.

        ``member`` may be a dotted path through embedded structs
        (``"signal.oom_score_adj"`` is not allowed: that crosses a pointer).
        """
        t = self._struct(struct_name)
        total = 0
        for part in member.split("."):
            found = self._find_member(t, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {member!r} in this kernel")
            bit_off, m_type = found
            if bit_off % 8:
                raise BtfError(f"{struct_name}.{member} is a bitfield; it cannot be read by offset")
            total += bit_off // 8
            t = self._resolve(m_type)
        return total

    def sizeof(self, struct_name: str) -> int:
        return self._struct(struct_name).size_or_type

    def enum_value(self, enum_name: str, enumerator: str) -> int:
        for kind in (_ENUM, _ENUM64):
            tid = self._by_name.get((kind, enum_name))
            if tid is None:
                continue
            t = self._types[tid]
            assert t is not None
            for name, value in t.enumerators:
                if name == enumerator:
                    return value
            raise BtfError(f"enum {enum_name} has no {enumerator} in this kernel")
        raise BtfError(f"the running kernel's BTF has no enum {enum_name}")

    def enumerator(self, name: str) -> int:
        """Value of an enumerator of any enum, anonymous ones included (e.g. MM_ANONPAGES)."""
        try:
            return self._enumerators[name]
        except KeyError:
            raise BtfError(f"the running kernel's BTF has no enumerator {name}") from None

    def has_enumerator(self, name: str) -> bool:
        return name in self._enumerators

    def type_name(self, tid: int) -> str:
        """A type as C spells it, typedef names kept: "struct task_struct *", "uid_t", "int"."""
        t = self._types[tid]
        if t is None:
            return "void"
        if t.kind == _PTR:
            return self.type_name(t.size_or_type) + " *"
        if t.kind in (_CONST, _VOLATILE, _RESTRICT, _TYPE_TAG):
            prefix = {_CONST: "const ", _VOLATILE: "volatile "}.get(t.kind, "")
            return prefix + self.type_name(t.size_or_type)
        if t.kind in (_STRUCT, _UNION, _ENUM, _ENUM64, _FWD):
            tag = "union" if t.kind == _UNION or (t.kind == _FWD and t.size_or_type) else (
                "struct" if t.kind in (_STRUCT, _FWD) else "enum")
            return f"{tag} {t.name}"
        if t.kind == _ARRAY and t.array is not None:
            return f"{self.type_name(t.array[0])}[{t.array[1]}]"
        if t.kind == _FUNC_PROTO:
            return "fn"
        return t.name

    def raw_tracepoint_args(self, event: str) -> tuple[str, ...] | None:
        """The arguments a raw tracepoint on ``event`` passes, after its context, as C type names;
        None when the kernel has no such tracepoint.

        The kernel declares, for every tracepoint, ``typedef void (*btf_trace_<event>)(void *, <TP_PROTO>)``
        (include/trace/bpf_probe.h) so that BPF programs can be typed against it: this is what
        ``ctx->args[i]`` holds on this very kernel, whatever its version says and whether or not
        tracefs is mounted.
        """
        tid = self._by_name.get((_TYPEDEF, f"btf_trace_{event}"))
        if tid is None:
            return None
        ptr = self._types[self._types[tid].size_or_type]  # type: ignore[union-attr]
        proto = self._types[ptr.size_or_type] if ptr is not None and ptr.kind == _PTR else None
        if proto is None or proto.kind != _FUNC_PROTO:
            raise BtfError(f"btf_trace_{event} is not a pointer to a function in this kernel's BTF")
        return tuple(self.type_name(p) for p in proto.params[1:])  # [0] is the context (void *)

    def member_is_array(self, struct_name: str, member: str) -> bool:
        found = self._find_member(self._struct(struct_name), member)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member!r} in this kernel")
        return self._resolve(found[1]).array is not None

    def array_member(self, struct_name: str, member: str) -> tuple[str, int]:
        """(element type name, element count) of an array member, e.g. mm_struct.rss_stat."""
        found = self._find_member(self._struct(struct_name), member)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member!r} in this kernel")
        t = self._resolve(found[1])
        if t.array is None:
            raise BtfError(f"{struct_name}.{member} is not an array in this kernel")
        elem = self._resolve(t.array[0])
        return elem.name, t.array[1]
