"""Known workloads for real-kernel tests: cgroups below a scratch cgroup, and bounded
allocators cheap enough to start by the dozen under an emulated CPU.

Every allocator is bounded (a fixed amount, a few times its cgroup's limit at
most) and every cgroup lies beneath the test process's own, so a mistake can
never become a node-wide OOM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from pxo.edge.cgroups import ScratchCgroup


class ChildCgroup:
    """A cgroup inside a ScratchCgroup (which holds no process itself), removed on exit;
    an optional limit of its own. On cgroup v2 the parent delegates the memory controller."""

    def __init__(self, parent: ScratchCgroup, name: str, *, limit_bytes: int | None = None) -> None:
        self.parent = parent
        self.hierarchy = parent.hierarchy
        self.dir = parent.dir / name
        self.path = f"{parent.path}/{name}"
        self.limit_bytes = limit_bytes or parent.limit_bytes  # what bounds its allocators

    def __enter__(self) -> ChildCgroup:
        if self.hierarchy.version == 2:
            (self.parent.dir / "cgroup.subtree_control").write_text("+memory")
        self.dir.mkdir()
        if self.limit_bytes != self.parent.limit_bytes:
            limit = "memory.limit_in_bytes" if self.hierarchy.version == 1 else "memory.max"
            (self.dir / limit).write_text(str(self.limit_bytes))
        return self

    def __exit__(self, *exc: object) -> None:
        self.parent._remove_one(self.dir, 5.0)

    @property
    def procs_file(self) -> Path:
        return self.dir / "cgroup.procs"

    def oom_kills(self) -> int:
        return memory_events(self).get("oom_kill", 0)


class Churn:
    """Cgroups created and removed over and over beside whatever ``parent`` holds, on a thread,
    until the context ends: pod churn, for readers that must survive a cgroup vanishing
    mid-read (a file of a cgroup being removed fails with ENODEV, or is missing while its
    directory is still there). Each gets a limit (below the parent's) when it can."""

    def __init__(self, parent: ScratchCgroup, n: int = 4) -> None:
        self.dirs = [parent.dir / f"churn{i}" for i in range(n)]
        self.paths = [f"{parent.path}/churn{i}" for i in range(n)]
        self._limit = "memory.limit_in_bytes" if parent.hierarchy.version == 1 else "memory.max"
        self._value = str(parent.limit_bytes // 2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn")
        if parent.hierarchy.version == 2:
            (parent.dir / "cgroup.subtree_control").write_text("+memory")

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in self.dirs:
                with contextlib.suppress(OSError):
                    d.mkdir()
                    (d / self._limit).write_text(self._value)
                with contextlib.suppress(OSError):
                    d.rmdir()

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for d in self.dirs:
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()


def memory_events(cg: ScratchCgroup | ChildCgroup) -> dict[str, int]:
    """The kernel's own counters: v2 memory.events, v1 memory.oom_control."""
    name = "memory.events" if cg.hierarchy.version == 2 else "memory.oom_control"
    out = {}
    for line in (cg.dir / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


class TailAllocator:
    """``head -c N /dev/zero | tail``: tail keeps its one endless line, so it holds N bytes
    (bounded by head) in anonymous memory; both join ``cg`` before starting. Costs two
    small C programs, not an interpreter. The victim of an OOM is the ``tail``."""

    def __init__(self, cg: ScratchCgroup | ChildCgroup, mib: int) -> None:
        assert mib << 20 <= 8 * cg.limit_bytes, "an allocator allocates at most 8 times its cgroup's limit"
        self.proc = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {cg.procs_file} && head -c {mib}M /dev/zero | tail; echo "tail=$?"'],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def wait(self, timeout: float = 120) -> int:
        """tail's exit status as the shell saw it (137: SIGKILLed), or, when the OOM killer took
        the shell too, the shell's own (-9)."""
        out, _ = self.proc.communicate(timeout=timeout)
        _, sep, status = out.strip().rpartition("tail=")
        return int(status) if sep else self.proc.returncode


class Holder:
    """A process in ``cg`` that holds ``mib`` MiB (written, resident) until it is killed or the
    context ends: a neighbour, a member of a group, or the known allocation a sampler must see.
    ``python`` is the interpreter to run (a guest kernel's own; by default this one)."""

    _CHILD = "import sys\nb = bytearray(b'\\x5a') * (int(sys.argv[1]) << 20)\nprint('ready', flush=True)\n" \
             "sys.stdin.readline()\n"

    def __init__(self, cg: ScratchCgroup | ChildCgroup, mib: int, *, python: str = sys.executable) -> None:
        assert mib << 20 < cg.limit_bytes
        # The shell joins the cgroup, then becomes the interpreter: every page is charged there.
        self.proc = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {cg.procs_file} && exec "$0" -c "$1" {mib}', python, self._CHILD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.close()
            raise AssertionError(f"the holder did not start (exit {self.proc.poll()})")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


CHILD_COMM = "pxo-alloc-test"  # the name FAULTING_CHILD gives itself
# Runs in the child: name itself, join the cgroup, then fault in its second argument's bytes
# of fresh anonymous memory page by page (one written byte per page makes the
# kernel allocate the page; MADV_NOHUGEPAGE keeps them 4 KiB pages, though a
# huge page would be counted at its full size too), then unmap it.
FAULTING_CHILD = r"""
import ctypes, mmap, os, sys
procs, size, comm = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(comm), 0, 0, 0)  # PR_SET_NAME
with open(procs, "w") as f:
    f.write(str(os.getpid()))
if size:
    m = mmap.mmap(-1, size)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    for off in range(0, size, mmap.PAGESIZE):
        m[off] = 1
    m.close()
"""
