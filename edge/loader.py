"""The short-lived helper that compiles, loads, attaches and pins pxo's programs, and
the edge's side of it.

BCC compiles with an embedded clang/LLVM: importing bcc alone maps libbcc and
LLVM (about 60 MiB resident), parsing the kernel's BTF in Python takes about
100 MiB more, and a compile peaks higher still. None of that belongs in a
process that runs for months, so the edge spawns this module:

    python -m pxo.edge.loader facts --btf /sys/kernel/btf/vmlinux --root /sys/fs/bpf/pxo
    python -m pxo.edge.loader load --root /sys/fs/bpf/pxo --program oom < manifest.json
    python -m pxo.edge.loader unpin --root /sys/fs/bpf/pxo [--stay]   (pxo delete)

``facts`` parses BTF and pins what the edge needs from it (every raw
tracepoint's arguments, the verifier's helpers, every struct offset the
programs use) as ``<root>/kernel``; ``load`` compiles bpf/<program>.bpf.c with
the manifest's flags, pins its maps and raw tracepoint attachments in a
temporary directory with the manifest, and swaps it in for ``<root>/<program>``
(edge/pins.py). The helper exits; the programs stay. The edge reads the facts
(``node_kernel``) and opens the pins (``load_program`` in edge/bpf.py).

A refusal (the compiler's or the verifier's) comes back as the helper's last
line of standard error and exit status 3.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pxo.common.version import pxo_version
from pxo.edge import pins, prereqs
from pxo.edge.btf import VMLINUX, Btf, BtfError
from pxo.edge.errors import PrerequisiteError
from pxo.edge.kernel import Kernel

log = logging.getLogger(__name__)

KERNEL_FACTS = "kernel"
# The structs whose members (and sizes) sources read beside Kernel.offsets, e.g. OomSource._open_bpf
# (task_struct.real_cred, pid.level...), AllocFaultsSource (task_struct.min_flt...): every member of
# these is recorded, anonymous members' members included. A member of any other struct makes the
# edge parse BTF itself (a warning says which: add its struct here).
RECORDED_STRUCTS = ("task_struct", "signal_struct", "mm_struct", "cred", "pid", "upid", "css_set", "cgroup",
                    "cgroup_subsys_state", "kernfs_node", "mem_cgroup", "page_counter", "kernel_siginfo",
                    "percpu_counter", "mm_rss_stat", "task_cputime", "sched_entity", "rlimit")
# The enumerators recorded, by prefix: the helpers this kernel's verifier knows (Kernel.has_helper).
# The edge asks no others; one outside these would make it parse BTF (a warning says which).
# All of them (about 19,000 on 6.18) held 2.3 MiB of the edge's heap for nothing.
RECORDED_ENUMERATORS = ("BPF_FUNC_",)
_REFUSED = 3


# -- the facts: what the edge knows of the kernel without parsing BTF --------------------


class FactsBtf(Btf):
    """The answers of a parsed Btf that pxo's sources ask for, from ``facts`` (a dict the
    helper made from the real BTF): raw tracepoint arguments, the RECORDED_ENUMERATORS, and
    the members and sizes of RECORDED_STRUCTS. A question outside them is answered by
    parsing BTF here after all (with a warning: it costs the edge about 100 MiB)."""

    def __init__(self, facts: Mapping[str, Any], path: Path) -> None:  # no super(): parsed on demand only
        self._hooks: dict[str, list[str]] = facts["hooks"]
        self._enums: dict[str, int] = facts["enumerators"]
        self._members: dict[str, int] = facts["members"]
        self._sizes: dict[str, int] = facts["sizes"]
        self._path = path
        self._parsed: Btf | None = None

    def _full(self, why: str) -> Btf:
        if self._parsed is None:
            log.warning("parsing %s in the edge for %s: add it to edge/loader.py's facts", self._path, why)
            self._parsed = Btf.load(self._path)
        return self._parsed

    def __getattr__(self, name: str) -> Any:  # the parsed tables Btf's other methods read
        if name.startswith("__") or name in ("_hooks", "_enums", "_members", "_sizes", "_path", "_parsed"):
            raise AttributeError(name)
        return getattr(self._full(name), name)

    def raw_tracepoint_args(self, event: str) -> tuple[str, ...] | None:
        args = self._hooks.get(event)
        return tuple(args) if args is not None else None

    def has_enumerator(self, name: str) -> bool:
        if name in self._enums:
            return True
        return False if name.startswith(RECORDED_ENUMERATORS) else self._full(name).has_enumerator(name)

    def enumerator(self, name: str) -> int:
        if name in self._enums:
            return self._enums[name]
        if name.startswith(RECORDED_ENUMERATORS):
            raise BtfError(f"the running kernel's BTF has no enumerator {name}")
        return self._full(name).enumerator(name)

    def has_member(self, struct_name: str, member: str) -> bool:
        key = f"{struct_name}.{member}"
        return key in self._members or self._full(key).has_member(struct_name, member)

    def offset(self, struct_name: str, member: str) -> int:
        key = f"{struct_name}.{member}"
        return self._members[key] if key in self._members else self._full(key).offset(struct_name, member)

    def sizeof(self, struct_name: str) -> int:
        return self._sizes[struct_name] if struct_name in self._sizes else self._full(struct_name).sizeof(struct_name)


@dataclass(frozen=True)
class NodeKernel(Kernel):
    """The running kernel as the edge sees it: BTF's answers from the helper, and where this
    node pins pxo's programs."""

    pin_root: Path = pins.PIN_ROOT


def _facts_key(release: str, btf_path: Path) -> dict[str, str]:
    h = hashlib.sha256(pxo_version().encode())
    for mod in (sys.modules[Btf.__module__], sys.modules[Kernel.__module__], sys.modules[__name__]):
        h.update(Path(str(mod.__file__)).read_bytes())
    return {"format": str(pins.FORMAT), "code": h.hexdigest(), "release": release, "boot_id": pins.boot_id(),
            "btf_path": str(btf_path)}


def facts_of(kernel: Kernel) -> dict[str, Any]:
    """What FactsBtf answers from, taken from a real Btf (in the helper)."""
    btf = kernel.btf
    hooks = {}
    for kind, name in list(btf._by_name):  # every btf_trace_<event> typedef: the raw tracepoints
        if kind == 8 and name.startswith("btf_trace_"):
            try:
                args = btf.raw_tracepoint_args(name[len("btf_trace_"):])
            except BtfError:
                continue
            if args is not None:
                hooks[name[len("btf_trace_"):]] = list(args)
    members: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for s in RECORDED_STRUCTS:
        try:
            sizes[s] = btf.sizeof(s)
            names = _member_names(btf, s)
        except BtfError:
            continue  # absent from this kernel: FactsBtf asks the real BTF, which says so
        for m in names:
            try:
                members[f"{s}.{m}"] = btf.offset(s, m)
            except BtfError:
                continue  # a bitfield: not readable by offset
    try:
        offsets: dict[str, int] | None = kernel.offsets
        error = ""
    except PrerequisiteError as exc:
        offsets, error = None, str(exc)
    enumerators = {k: v for k, v in btf._enumerators.items() if k.startswith(RECORDED_ENUMERATORS)}
    return {"hooks": hooks, "enumerators": enumerators, "members": members, "sizes": sizes,
            "offsets": offsets, "offsets_error": error}


def _member_names(btf: Btf, struct_name: str) -> list[str]:
    """Every member name Btf.offset finds in the struct: its own, and those of anonymous members."""
    out: list[str] = []

    def walk(t: Any) -> None:
        for name, tid, _bits in t.members:
            if name:
                out.append(name)
            else:
                inner = btf._resolve(tid)
                if inner.members:
                    walk(inner)

    walk(btf._struct(struct_name))
    return out


def _run_helper(args: list[str], *, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pxo.edge.loader", *args], input=stdin, capture_output=True,
                          text=True, check=False)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


@functools.lru_cache(maxsize=4)
def node_kernel(btf_path: Path = VMLINUX, pin_root: Path = pins.PIN_ROOT) -> NodeKernel:
    """The running kernel, once the node has what eBPF needs (PrerequisiteError otherwise).

    The facts are pinned (``<pin_root>/kernel``) for as long as this boot and this pxo last:
    a restarting edge reads them in milliseconds; the first edge spawns the helper to parse BTF."""
    prereqs.require_bpf(btf_path=btf_path)
    release = platform.release()
    pins.ensure_bpffs(pin_root)
    key = _facts_key(release, btf_path)
    found = pins.read_blob(pin_root / KERNEL_FACTS)
    if found is None or found.get("key") != key:
        done = _run_helper(["facts", "--btf", str(btf_path), "--root", str(pin_root)])
        if done.returncode != 0:
            raise PrerequisiteError(_last_line(done.stderr))
        found = pins.read_blob(pin_root / KERNEL_FACTS)
        if found is None:
            raise PrerequisiteError(f"pxo's loader left no kernel facts in {pin_root}")
    facts = found["facts"]
    kernel = NodeKernel(release, FactsBtf(facts, btf_path), btf_path, pin_root)
    if facts["offsets"] is not None:
        kernel.__dict__["offsets"] = facts["offsets"]  # Kernel.offsets is a cached_property: this is its value
    else:
        raise PrerequisiteError(facts["offsets_error"])
    return kernel


def load(program: str, *, kernel: NodeKernel, flags: Mapping[str, int]) -> pins.PinnedProgram:
    """``program`` with ``flags``, pinned: adopted when what is pinned is what would be loaded
    now, else loaded by the helper (which replaces any other version). When another edge on
    this node holds the pins, this edge loads a private copy that ends with it."""
    root = kernel.pin_root
    wanted = pins.wanted_manifest(program, flags, release=kernel.release)
    pins.ensure_bpffs(root)  # again: `pxo delete` may have removed it since this process looked
    held = pins.lock(root, program)
    if held is None:
        log.info("bpf/%s.bpf.c: another edge on this node holds %s; loading a copy of this edge's own",
                 program, root / program)
        return pins.open_private(root / _run_load(program, kernel, wanted, private=True))
    try:
        found = pins.adopt(root, program, wanted, lock=held)
        if found is not None:
            log.info("bpf/%s.bpf.c: adopted the programs pinned in %s (loaded by an earlier edge)", program,
                     found.directory)
            return found
        _run_load(program, kernel, wanted, private=False)
        loaded = pins.adopt(root, program, wanted, lock=held)
    except BaseException:
        os.close(held)
        raise
    if loaded is None:
        os.close(held)
        raise PrerequisiteError(f"pxo's loader pinned bpf/{program}.bpf.c but its pins cannot be opened")
    loaded.adopted = False
    log.info("bpf/%s.bpf.c loaded and pinned in %s (struct offsets from %s)", program, loaded.directory,
             kernel.btf_path)
    return loaded


def _run_load(program: str, kernel: NodeKernel, wanted: Mapping[str, Any], *, private: bool) -> str:
    """Run the helper's ``load``; returns the name of the directory it pinned into."""
    done = _run_helper(["load", "--root", str(kernel.pin_root), "--program", program,
                        *(["--private"] if private else [])], stdin=json.dumps(wanted))
    if done.returncode != 0:
        why = _last_line(done.stderr)
        if done.returncode == _REFUSED:
            raise PrerequisiteError(f"kernel {kernel.release} refused bpf/{program}.bpf.c: {why}")
        raise PrerequisiteError(f"pxo's loader failed on bpf/{program}.bpf.c: {why}")
    return _last_line(done.stdout)


# -- the helper ---------------------------------------------------------------------------


def _write_facts(btf_path: Path, root: Path) -> None:
    from pxo.edge.kernel import running_kernel

    kernel = running_kernel(btf_path)
    pins.ensure_bpffs(root)
    path = root / KERNEL_FACTS
    tmp = root / f"new_{KERNEL_FACTS}_{os.getpid()}"  # bpffs refuses names with a dot
    pins.write_blob(tmp, {"key": _facts_key(kernel.release, btf_path), "facts": facts_of(kernel)})
    if path.exists():
        path.unlink()
    tmp.rename(path)


def _remove_abandoned(root: Path) -> None:
    """Pins a helper left half made when it was killed (new_<name>_<pid>, that pid gone): their
    programs would stay attached with nobody reading them."""
    for d in root.glob("new_*_*"):
        pid = d.name.rsplit("_", 1)[-1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        else:
            d.unlink(missing_ok=True)


def _load_and_pin(root: Path, manifest: dict[str, Any], *, private: bool) -> str:
    """Compile and load manifest["program"] with its flags, pin it, swap the pins in (unless
    ``private``: then they stay in a directory of their own for the edge to open and unpin);
    returns the directory's name."""
    program = str(manifest["program"])
    src = pins.bpf_dir()
    cflags = [f"-D{k}={v}" for k, v in manifest["flags"].items()] + [f"-I{src}"]
    from bcc import BPF
    from bcc.libbcc import lib

    try:
        bpf = BPF(src_file=str(src / f"{program}.bpf.c"), cflags=cflags)
    except Exception as exc:  # bcc raises a plain Exception on compile or load failure
        print(str(exc).replace("\n", " "), file=sys.stderr)
        raise SystemExit(_REFUSED) from None
    pins.ensure_bpffs(root)
    _remove_abandoned(root)
    tmp = root / f"new_{program}_{os.getpid()}"
    tmp.mkdir(mode=0o700)
    try:
        maps: dict[str, dict[str, Any]] = {}
        lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ctypes.c_ulonglong, [ctypes.c_void_p]
        lib.bpf_table_name.restype = ctypes.c_char_p
        lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
        for i in range(lib.bpf_num_tables(bpf.module)):
            name = lib.bpf_table_name(bpf.module, i)
            fd = lib.bpf_table_fd(bpf.module, name)
            key = lib.bpf_table_key_desc(bpf.module, name).decode()
            leaf = lib.bpf_table_leaf_desc(bpf.module, name).decode()
            pins.obj_pin(fd, tmp / f"map_{name.decode()}")
            maps[name.decode()] = {"key": json.loads(key) if key else None, "leaf": json.loads(leaf) if leaf else None}
        links = []
        for tp, fd in bpf.raw_tracepoint_fds.items():
            pins.obj_pin(fd, tmp / f"link_{tp.decode()}")
            links.append(tp.decode())
        pins.write_blob(tmp / pins.MANIFEST, {**manifest, "maps": maps, "links": sorted(links)})
        if private:
            return tmp.name
        final = root / program
        if final.exists():  # another version: unpinned, it detaches once no edge holds it
            shutil.rmtree(final)
        tmp.rename(final)
        return final.name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stay() -> None:
    """Until SIGTERM (as PID 1 of a container, a signal without a handler is ignored)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pxo.edge.loader", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("facts", help="parse BTF, pin what the edge needs of it as <root>/kernel")
    f.add_argument("--btf", type=Path, default=VMLINUX)
    f.add_argument("--root", type=Path, default=pins.PIN_ROOT)
    ld = sub.add_parser("load", help="compile, load, attach and pin a program (its manifest on stdin)")
    ld.add_argument("--root", type=Path, default=pins.PIN_ROOT)
    ld.add_argument("--program", required=True)
    ld.add_argument("--private", action="store_true", help="leave the pins in a directory of their own (printed)")
    un = sub.add_parser("unpin", help="remove every pxo program pinned under --root (pxo delete): they detach")
    un.add_argument("--root", type=Path, default=pins.PIN_ROOT)
    un.add_argument("--stay", action="store_true",
                    help="then wait for SIGTERM (pxo delete --kubernetes runs this as a DaemonSet, ready once "
                         "--root is gone)")
    args = ap.parse_args(argv)
    # Before 5.11 maps are charged to RLIMIT_MEMLOCK (64 KiB by default): lift it, as BCC does.
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):  # a container's hard limit: as far as it goes
        hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    try:
        if args.command == "facts":
            _write_facts(args.btf, args.root)
        elif args.command == "unpin":
            if pins.remove(args.root):
                print(f"removed {args.root}", flush=True)
            if args.stay:  # a pod's log: say it either way
                print(f"no pins in {args.root} now: staying until stopped", flush=True)
                _stay()
        else:
            manifest = json.loads(sys.stdin.read())
            if manifest.get("program") != args.program:
                raise PrerequisiteError(f"the manifest is for {manifest.get('program')!r}, not {args.program!r}")
            print(_load_and_pin(args.root, manifest, private=args.private))
    except (PrerequisiteError, pins.PinError, OSError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
