"""pxo's eBPF objects pinned in bpffs, so that they outlive the edge process.

A program is compiled, loaded, attached and pinned by a short-lived helper
(``python -m pxo.edge.loader``, edge/loader.py), so that BCC's embedded
clang/LLVM never lives in the long-running edge; the edge opens what is
pinned with libbpf (``libbpf.so.1``, through ctypes: no BCC in the edge).
While the edge is down (SIGKILLed, restarting, upgrading), the programs keep
running and their ring buffers keep what they capture; a starting edge adopts
the pins and drains that backlog first.

Layout, one directory per program under ``/sys/fs/bpf/pxo`` (``PIN_ROOT``)::

    <program>/link_<tracepoint>   a raw tracepoint attachment (a bpf_link, Linux 5.7+)
    <program>/map_<name>          every map of the program (ring buffer, counters...)
    <program>/manifest            a one-slot array map holding the manifest (JSON)
    kernel                        the kernel's facts for the edge (edge/loader.py), same format

bpffs holds only BPF objects and directories, so a manifest is a map too.
The manifest says what was loaded: a hash of the program's sources and every
``-D`` flag (its ``key``), the kernel release and boot id, and, for people, the
pxo version that loaded it. A pin set is adopted only when its manifest's ``key``
and kernel are the ones the edge would load now; otherwise it is replaced (the
helper pins into a temporary directory, then swaps it in). The key leaves pxo's
version out on purpose: what is pinned is fully made of the C sources and flags
(BCC attaches each raw tracepoint the source declares, and the manifest records
every map's type), so an upgrade that does not change them adopts the running
programs and drains what they caught while the pods were being replaced, as a
restart does. ``FORMAT`` changes when the pin layout or the manifest does.
``remove()`` (``pxo delete``) unpins everything.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import select
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pxo.bpf
from pxo.common.version import pxo_version
from pxo.edge.errors import EdgeError, PrerequisiteError

log = logging.getLogger(__name__)

PIN_ROOT = Path("/sys/fs/bpf/pxo")
MANIFEST = "manifest"
FORMAT = 1

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27


class PinError(EdgeError):
    """A pinned object cannot be made, opened or read."""


# -- libbpf ---------------------------------------------------------------------------

_lib: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 (Debian's libbpf1, which BCC itself links): 350 kB of C, no compiler.

    Its calls return a negative errno on failure (libbpf 1.x); argument types are set here."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as exc:
        raise PrerequisiteError(f"libbpf: {exc}; install Debian's libbpf1 (BCC's own dependency)") from exc
    c_int, c_void_p, c_char_p, c_uint32 = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32
    for name, res, args in (
        ("bpf_obj_pin", c_int, [c_int, c_char_p]),
        ("bpf_obj_get", c_int, [c_char_p]),
        ("bpf_map_lookup_elem", c_int, [c_int, c_void_p, c_void_p]),
        ("bpf_map_update_elem", c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
        ("bpf_map_create", c_int, [c_int, c_char_p, c_uint32, c_uint32, c_uint32, c_void_p]),
        ("bpf_obj_get_info_by_fd", c_int, [c_int, c_void_p, ctypes.POINTER(c_uint32)]),
        ("bpf_map_lookup_batch", c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                         ctypes.POINTER(c_uint32), c_void_p]),
        ("bpf_map_lookup_and_delete_batch", c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                                    ctypes.POINTER(c_uint32), c_void_p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    return lib


def _check(res: int, what: str) -> int:
    if res < 0:
        err = -res if res != -1 else ctypes.get_errno()
        raise PinError(f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")
    return res


def obj_get(path: Path) -> int:
    """An fd of the object pinned at ``path`` (PinError when there is none)."""
    return _check(libbpf().bpf_obj_get(str(path).encode()), f"cannot open pinned {path}")


def obj_pin(fd: int, path: Path) -> None:
    _check(libbpf().bpf_obj_pin(fd, str(path).encode()), f"cannot pin {path}")


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (include/uapi/linux/bpf.h)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


def map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "cannot describe a map")
    return info


def lookup_batch(fd: int, in_batch: Any, out_batch: Any, keys: Any, values: Any, count: Any) -> int:
    """BPF_MAP_LOOKUP_BATCH with bcc.libbcc's arguments (bpf_lookup_batch), over libbpf: no
    compiler in the edge. Returns 0, or a negative errno (also in ctypes.get_errno())."""
    return int(libbpf().bpf_map_lookup_batch(fd, in_batch, out_batch, keys, values, count, None))


def lookup_and_delete_batch(fd: int, in_batch: Any, out_batch: Any, keys: Any, values: Any, count: Any) -> int:
    """BPF_MAP_LOOKUP_AND_DELETE_BATCH, as ``lookup_batch`` (bcc's bpf_lookup_and_delete_batch)."""
    return int(libbpf().bpf_map_lookup_and_delete_batch(fd, in_batch, out_batch, keys, values, count, None))


def lookup_elem(fd: int, key: Any, value: Any) -> int:
    """BPF_MAP_LOOKUP_ELEM (bcc's bpf_lookup_elem): 0, or a negative errno."""
    return int(libbpf().bpf_map_lookup_elem(fd, key, value))


# -- bpffs ----------------------------------------------------------------------------

_BPF_FS_MAGIC = 0xCAFE4A11


def ensure_bpffs(root: Path = PIN_ROOT, mountinfo: Path = Path("/proc/self/mountinfo")) -> None:
    """Make sure ``root``'s parent is a bpf filesystem, mounting one on it when it is not
    (nodes without systemd do not mount /sys/fs/bpf); then create ``root``."""
    parent = root.parent
    mounted = any(len(f) > 8 and f[4] == str(parent) and f[f.index("-") + 1] == "bpf"
                  for f in (line.split() for line in _read_lines(mountinfo)))
    if not mounted and not _is_bpffs(parent):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.mount(b"bpf", str(parent).encode(), b"bpf", 0, b"mode=0700") != 0:
            err = ctypes.get_errno()
            raise PrerequisiteError(f"bpffs: {parent} is not a bpf filesystem and mounting one failed: "
                                    f"{os.strerror(err)} (in Kubernetes: mount the host's /sys/fs/bpf)")
        log.info("mounted a bpf filesystem on %s", parent)
    root.mkdir(mode=0o700, exist_ok=True)


def _is_bpffs(path: Path) -> bool:
    class _StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]

    st = _StatFs()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    return bool(libc.statfs(str(path).encode(), ctypes.byref(st)) == 0 and st.f_type == _BPF_FS_MAGIC)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def remove(root: Path = PIN_ROOT) -> bool:
    """Unpin everything under ``root`` (the programs detach when nothing else holds them)."""
    if not root.exists():
        return False
    shutil.rmtree(root)
    return True


# -- blobs: JSON in a one-slot array map ---------------------------------------------


def write_blob(path: Path, data: Mapping[str, Any]) -> None:
    """Pin a one-slot array map at ``path`` that holds ``data`` as JSON."""
    raw = json.dumps(data, sort_keys=True).encode()
    size = (len(raw) + 8) // 8 * 8  # NUL-terminated, 8-aligned
    lib = libbpf()
    fd = _check(lib.bpf_map_create(BPF_MAP_TYPE_ARRAY, path.name[:15].encode(), 4, size, 1, None),
                f"cannot create the map for {path}")
    try:
        key, buf = ctypes.c_uint32(0), ctypes.create_string_buffer(raw, size)
        _check(lib.bpf_map_update_elem(fd, ctypes.byref(key), buf, 0), f"cannot write {path}")
        obj_pin(fd, path)
    finally:
        os.close(fd)


def read_blob(path: Path) -> dict[str, Any] | None:
    """What write_blob left at ``path``; None when nothing (or something else) is pinned there."""
    if not path.exists():
        return None
    try:
        fd = obj_get(path)
    except PinError:
        return None
    try:
        info = map_info(fd)
        if info.type != BPF_MAP_TYPE_ARRAY or info.key_size != 4 or info.max_entries != 1:
            return None
        key, buf = ctypes.c_uint32(0), ctypes.create_string_buffer(info.value_size)
        if libbpf().bpf_map_lookup_elem(fd, ctypes.byref(key), buf) != 0:
            return None
        value = json.loads(buf.value.decode())
        return value if isinstance(value, dict) else None
    except (PinError, ValueError):
        return None
    finally:
        os.close(fd)


# -- manifests ------------------------------------------------------------------------


def bpf_dir() -> Path:
    """Where bpf/*.bpf.c and their headers are (the pxo.bpf data package)."""
    for p in pxo.bpf.__path__:
        if (Path(p) / "cgroup.h").is_file():
            return Path(p)
    raise PrerequisiteError("pxo's BPF sources (bpf/*.bpf.c) are not installed with the package")


def boot_id(proc: Path = Path("/proc")) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def program_key(program: str, flags: Mapping[str, int]) -> str:
    """What identifies a load of ``program``: its sources (the program and every header it may
    include) and its flags, not pxo's version (see above). The kernel (release, boot id) is
    checked beside it."""
    src = bpf_dir()
    h = hashlib.sha256(f"{FORMAT}\0{program}\0".encode())
    for f in [src / f"{program}.bpf.c", *sorted(src.glob("*.h"))]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps(dict(flags), sort_keys=True).encode())
    return h.hexdigest()


def wanted_manifest(program: str, flags: Mapping[str, int], *, release: str,
                    proc: Path = Path("/proc")) -> dict[str, Any]:
    return {"format": FORMAT, "pxo": pxo_version(), "program": program, "key": program_key(program, flags),
            "release": release, "boot_id": boot_id(proc), "flags": dict(flags)}


def matches(found: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
    return found is not None and all(found.get(k) == wanted[k] for k in ("format", "key", "release", "boot_id"))


# -- the edge's side: a pinned program ------------------------------------------------

_C_TYPES: dict[str, Any] = {
    "_Bool": ctypes.c_bool, "char": ctypes.c_char, "signed char": ctypes.c_byte, "unsigned char": ctypes.c_ubyte,
    "short": ctypes.c_short, "unsigned short": ctypes.c_ushort, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong, "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong, "__int128": ctypes.c_ubyte * 16,
    "unsigned __int128": ctypes.c_ubyte * 16, "void *": ctypes.c_void_p,
}


def c_type(desc: Any) -> Any:
    """A ctypes type from BCC's JSON description of a map's key or value (what BCC's
    BPF._decode_table_type reads: a C name, or [name, [fields...], "struct"|"union"])."""
    if isinstance(desc, str):
        if desc not in _C_TYPES:
            raise PinError(f"map type {desc!r} is not one pxo can read")
        return _C_TYPES[desc]
    fields: list[tuple[Any, ...]] = []
    anon: list[str] = []
    for f in desc[1]:
        if len(f) == 2:
            fields.append((f[0], c_type(f[1])))
        elif isinstance(f[2], list):
            fields.append((f[0], c_type(f[1]) * f[2][0]))
        elif isinstance(f[2], int):
            fields.append((f[0], c_type(f[1]), f[2]))
        else:  # a nested struct or union
            name = f[0] or f"__anon{len(anon)}"
            if not f[0]:
                anon.append(name)
            fields.append((name, c_type(f)))
    base = ctypes.Union if len(desc) > 2 and desc[2] == "union" else ctypes.Structure
    attrs: dict[str, Any] = {"_anonymous_": anon, "_fields_": fields}
    if len(desc) > 2 and desc[2] == "struct_packed":
        attrs["_pack_"] = 1
    return type(str(desc[0]), (base,), attrs)


def possible_cpus(path: Path = Path("/sys/devices/system/cpu/possible")) -> int:
    """How many values a per-CPU map holds per entry: the highest possible CPU + 1."""
    top = 0
    for part in path.read_text().strip().split(","):
        top = max(top, int(part.split("-")[-1]))
    return top + 1


class PinnedMap:
    """A pinned map, with what BCC's tables offer the sources: ``map_fd``, ``total_cpu``,
    and ``[key]`` reads and writes of single-value maps."""

    def __init__(self, fd: int, *, name: str, key: Any, leaf: Any) -> None:
        self.map_fd = fd
        self.name = name
        self.Key = key
        self.Leaf = leaf
        self.total_cpu = possible_cpus()

    def __getitem__(self, key: Any) -> Any:
        leaf = self.Leaf()
        if libbpf().bpf_map_lookup_elem(self.map_fd, ctypes.byref(key), ctypes.byref(leaf)) != 0:
            raise KeyError(key)
        return leaf

    def __setitem__(self, key: Any, leaf: Any) -> None:
        _check(libbpf().bpf_map_update_elem(self.map_fd, ctypes.byref(key), ctypes.byref(leaf), 0),
               f"cannot write map {self.name}")


_BUSY, _DISCARD = 1 << 31, 1 << 30  # a record's header bits (BPF_RINGBUF_BUSY_BIT, _DISCARD_BIT)


class RingBuffer:
    """A consumer of a pinned BPF_MAP_TYPE_RINGBUF, reading the kernel's layout directly (as
    libbpf's ring_buffer__consume does): the consumer page (consumer position, written here),
    then the producer page (producer position) and the data pages.

    The consumer position lives in the map, shared by every process that maps it: a new edge
    resumes where the last one stopped, so what the kernel wrote meanwhile is read first.
    ``replay`` (seconds): the position given back to the kernel trails what was delivered by
    that long, so that records whose rows an edge had not yet written when it was killed are
    delivered again to the next edge (which must drop the ones it finds written); 0: at once.
    """

    def __init__(self, fd: int, on_sample: Callable[[int, int], None], *, replay: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fd = fd
        self._on_sample = on_sample
        self._replay = replay
        self._clock = clock
        size = map_info(fd).max_entries
        page = mmap.PAGESIZE
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._libc = libc
        # The data pages once (libbpf maps them twice in a row, so that a record that wraps reads as
        # one; each mapping counts in the edge's RSS): the few records that wrap are copied instead.
        self._lens = (page, page + size)
        cons = libc.mmap(None, page, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        prod = libc.mmap(None, page + size, mmap.PROT_READ, mmap.MAP_SHARED, fd, page)
        if cons in (None, ctypes.c_void_p(-1).value) or prod in (None, ctypes.c_void_p(-1).value):
            raise PinError(f"cannot map the ring buffer: {os.strerror(ctypes.get_errno())}")
        self._maps: tuple[int, int] | None = (cons, prod)
        self._consumer = ctypes.c_uint64.from_address(cons)
        self._producer = ctypes.c_uint64.from_address(prod)
        self._data = prod + page
        self._size = size
        self._mask = size - 1
        self._pos = self._consumer.value  # delivered up to here
        self._pending: collections.deque[tuple[float, int]] = collections.deque()  # (when, position) delivered
        self._poller = select.epoll()
        self._poller.register(fd, select.EPOLLIN)

    def poll(self, timeout_ms: int) -> int:
        if self._maps is None:
            return 0
        if self._producer.value == self._pos:
            self._poller.poll(max(timeout_ms, 0) / 1000)
        return self.consume()

    def consume(self) -> int:
        """Deliver every complete record; returns how many."""
        if self._maps is None:
            return 0
        n = 0
        end = self._producer.value
        while self._pos < end:
            header = ctypes.c_uint32.from_address(self._data + (self._pos & self._mask)).value
            if header & _BUSY:  # reserved, not yet submitted: it holds back everything behind it
                break
            length = header & ~(_BUSY | _DISCARD)
            if not header & _DISCARD:
                start = (self._pos + 8) & self._mask  # headers are 8-aligned: never split
                if start + length <= self._size:
                    self._on_sample(self._data + start, length)
                else:  # wraps past the end of the data pages: one contiguous copy
                    first = self._size - start
                    buf = ctypes.create_string_buffer(length)
                    ctypes.memmove(buf, self._data + start, first)
                    ctypes.memmove(ctypes.addressof(buf) + first, self._data, length - first)
                    self._on_sample(ctypes.addressof(buf), length)
                n += 1
            self._pos += (length + 8 + 7) & ~7
            if self._pos >= end:
                end = self._producer.value
        self._give_back()
        return n

    def _give_back(self, *, everything: bool = False) -> None:
        if everything or self._replay <= 0:
            self._pending.clear()
            self._consumer.value = self._pos
            return
        now = self._clock()
        if not self._pending or self._pending[-1][1] != self._pos:
            self._pending.append((now, self._pos))
        while self._pending and now - self._pending[0][0] >= self._replay:
            self._consumer.value = self._pending.popleft()[1]

    def free(self, *, keep_replay: bool = False) -> None:
        """Unmap. ``keep_replay``: leave the last ``replay`` seconds for the next reader."""
        if self._maps is None:
            return
        if not keep_replay:
            self._give_back(everything=True)
        self._poller.close()
        for addr, length in zip(self._maps, self._lens, strict=True):
            self._libc.munmap(addr, length)
        self._maps = None


class PinnedProgram:
    """A loaded program as the edge holds it: its pinned maps and attachments, opened.

    The edge keeps each attachment's fd open, so a program another edge replaces stays
    attached until this one lets go. ``cleanup()`` closes what this process opened and
    leaves the pins: the program keeps running."""

    def __init__(self, directory: Path, manifest: Mapping[str, Any], *, adopted: bool, lock: int | None = None,
                 private: bool = False) -> None:
        """``lock``: this edge's hold on the program's pins (see ``lock``), released by cleanup();
        ``private``: open everything now, for ``directory`` is about to be unpinned."""
        self.directory = directory
        self.manifest = dict(manifest)
        self.adopted = adopted  # found pinned (a previous edge loaded it), not loaded now
        self.private = private  # this process's own copy: it ends with the process
        self.flags: dict[str, int] = dict(manifest.get("flags", {}))
        self._maps: dict[str, PinnedMap] = {}
        self._links: dict[str, int] = {}
        self._rings: list[RingBuffer] = []
        self._lock = lock
        try:
            for tp in manifest.get("links", []):
                self._links[tp] = obj_get(directory / f"link_{tp}")
            if private:
                for name in manifest.get("maps", {}):
                    self[name]
        except PinError:
            self.cleanup()
            raise

    def __getitem__(self, name: str) -> PinnedMap:
        if name not in self._maps:
            desc = self.manifest.get("maps", {}).get(name)
            if desc is None:
                raise KeyError(name)
            fd = obj_get(self.directory / f"map_{name}")
            key = c_type(desc["key"]) if desc.get("key") else ctypes.c_int
            self._maps[name] = PinnedMap(fd, name=name, key=key, leaf=c_type(desc["leaf"]))
        return self._maps[name]

    def ring_buffer(self, name: str, on_sample: Callable[[int, int], None], *, replay: float = 0.0) -> RingBuffer:
        rb = RingBuffer(self[name].map_fd, on_sample, replay=0.0 if self.private else replay)
        self._rings.append(rb)
        return rb

    def detach_raw_tracepoint(self, tp: bytes | str = b"") -> None:
        """Stop the program at ``tp`` for good: unpin and close its attachment (the next edge
        finds the set incomplete and loads it again)."""
        name = tp.decode() if isinstance(tp, bytes) else tp
        if not self.private:
            (self.directory / f"link_{name}").unlink(missing_ok=True)
        fd = self._links.pop(name, None)
        if fd is not None:
            os.close(fd)

    def cleanup(self) -> None:
        for rb in self._rings:
            rb.free()
        self._rings.clear()
        for m in self._maps.values():
            os.close(m.map_fd)
        self._maps.clear()
        for fd in self._links.values():
            os.close(fd)
        self._links.clear()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def lock(root: Path, program: str) -> int | None:
    """This process's exclusive hold on ``program``'s pins (an fd to keep open), or None when
    another edge on this node holds them (tests run several edges on one machine: each must
    read its own ring buffer, since a ring buffer's readers share one consumer position).
    The kernel releases the lock when the holder exits, however it exits."""
    directory = root / f"lock_{program}"  # a directory: bpffs holds no plain files
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def open_private(directory: Path) -> PinnedProgram:
    """A program the loader pinned in ``directory`` for this process alone: opened, then unpinned
    (the open fds keep it loaded and attached until this process lets go)."""
    try:
        found = read_blob(directory / MANIFEST)
        if found is None:
            raise PinError(f"no manifest in {directory}")
        return PinnedProgram(directory, found, adopted=False, private=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def adopt(root: Path, program: str, wanted: Mapping[str, Any], *, lock: int | None = None) -> PinnedProgram | None:
    """The pinned ``program`` when its manifest matches ``wanted`` and all its pins are there."""
    directory = root / program
    found = read_blob(directory / MANIFEST)
    if not matches(found, wanted):
        return None
    assert found is not None
    if not all((directory / f"link_{tp}").exists() for tp in found.get("links", [])) or \
            not all((directory / f"map_{m}").exists() for m in found.get("maps", {})):
        return None
    try:
        return PinnedProgram(directory, found, adopted=True, lock=lock)
    except PinError as exc:
        log.info("pinned %s cannot be opened (%s): loading it again", program, exc)
        return None
