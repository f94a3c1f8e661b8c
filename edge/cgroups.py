"""cgroupfs: where the hierarchies are, which cgroup a process is in, and
throw-away memory-limited cgroups for causing contained OOM kills.

Both layouts are supported: cgroup v1 with a ``memory`` hierarchy (these
machines) and cgroup v2 with the memory controller on the unified hierarchy
(most Kubernetes nodes today). The roots are injected, so tests can pass
fixture trees.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pxo.edge.errors import EdgeError


class CgroupError(EdgeError):
    """A cgroup could not be found, created, configured or removed."""


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    mount: Path
    controllers: frozenset[str]  # v1: mount options naming controllers; v2: cgroup.controllers


def hierarchies(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Hierarchy]:
    found = []
    for line in mountinfo.read_text().splitlines():
        # id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, mount = rfields[0], Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            try:
                ctrl = frozenset((mount / "cgroup.controllers").read_text().split())
            except OSError:
                ctrl = frozenset()
            found.append(Hierarchy(2, mount, ctrl))
        elif fstype == "cgroup":
            found.append(Hierarchy(1, mount, frozenset(rfields[2].split(","))))
    return found


def memory_hierarchy(mountinfo: Path = Path("/proc/self/mountinfo")) -> Hierarchy:
    """The hierarchy that carries the memory controller (v1 memory, else v2)."""
    hs = hierarchies(mountinfo)
    for h in hs:
        if h.version == 1 and "memory" in h.controllers:
            return h
    for h in hs:
        if h.version == 2 and "memory" in h.controllers:
            return h
    raise CgroupError("no cgroup hierarchy with the memory controller is mounted")


def cgroup_of(h: Hierarchy, proc_cgroup: Path = Path("/proc/self/cgroup")) -> str:
    """The path of a process's cgroup within hierarchy ``h`` (from /proc/PID/cgroup)."""
    for line in proc_cgroup.read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if h.version == 2 and hid == "0" and ctrls == "":
            return path
        # v1 mount options list the controllers (and rw, relatime...), which
        # never appear as names in /proc/PID/cgroup, so any overlap identifies it.
        if h.version == 1 and hid != "0" and set(ctrls.split(",")) & h.controllers:
            return path
    raise CgroupError(f"{proc_cgroup} names no cgroup in the hierarchy at {h.mount}")


class ScratchCgroup:
    """A memory-limited cgroup beneath the calling process's own cgroup, removed on exit.

    The limit is written before any process joins, so a mistake cannot become
    a machine-wide OOM.
    """

    def __init__(self, limit_bytes: int, *, prefix: str = "pxo-scratch", nested: str = "",
                 hierarchy: Hierarchy | None = None,
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> None:
        self.hierarchy = hierarchy or memory_hierarchy()
        own = cgroup_of(self.hierarchy, proc_cgroup)
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        # ``nested`` lays out more levels below it (e.g. a Kubernetes pod and container)
        top = f"{own.rstrip('/')}/{self.name}"
        self.path = f"{top}/{nested.strip('/')}" if nested.strip("/") else top  # as the kernel names it
        self.top_dir = self.hierarchy.mount / top.lstrip("/")
        self.dir = self.hierarchy.mount / self.path.lstrip("/")
        self.limit_bytes = limit_bytes

    def __enter__(self) -> ScratchCgroup:
        try:
            if self.hierarchy.version == 2:
                self._enable_memory_v2()
            self.top_dir.mkdir()
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.hierarchy.version == 2:  # the controller must be enabled at every level, from the top
                # down: a level can hand it on only once its own parent has handed it to it
                for d in reversed(self.dir.parents):
                    if d == self.top_dir or self.top_dir in d.parents:
                        (d / "cgroup.subtree_control").write_text("+memory")
            if self.hierarchy.version == 1:
                self._write("memory.limit_in_bytes", str(self.limit_bytes))
                if (self.dir / "memory.memsw.limit_in_bytes").exists():
                    self._write("memory.memsw.limit_in_bytes", str(self.limit_bytes))
            else:
                self._write("memory.max", str(self.limit_bytes))
                if (self.dir / "memory.swap.max").exists():
                    self._write("memory.swap.max", "0")
        except OSError as exc:
            self.remove()
            raise CgroupError(f"cannot create a memory-limited cgroup at {self.dir}: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _enable_memory_v2(self) -> None:
        parent = self.top_dir.parent  # our own cgroup (self.dir.parent is one of ours when nested)
        if "memory" in (parent / "cgroup.subtree_control").read_text().split():
            return
        try:
            (parent / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise CgroupError(
                    f"cannot enable the memory controller below {parent}: it holds processes "
                    "(cgroup v2 'no internal processes' rule); run from a leaf cgroup's parent"
                ) from exc
            raise

    def _write(self, name: str, value: str) -> None:
        (self.dir / name).write_text(value)

    @property
    def procs_file(self) -> Path:
        return self.dir / "cgroup.procs"

    def read(self, name: str) -> str:
        return (self.dir / name).read_text()

    def oom_kills(self) -> int:
        """How many OOM kills the kernel counted in this cgroup."""
        text = self.read("memory.oom_control" if self.hierarchy.version == 1 else "memory.events")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, timeout: float = 5.0) -> None:
        if self.dir != self.top_dir and self.dir.exists():
            self._remove_one(self.dir, timeout)
            d = self.dir.parent
            while d != self.top_dir and self.top_dir in d.parents:
                self._remove_one(d, timeout)
                d = d.parent
        if self.top_dir.exists():
            self._remove_one(self.top_dir, timeout)

    def _remove_one(self, directory: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                directory.rmdir()
                return
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                if time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove {directory}: {exc}") from exc
                time.sleep(0.05)


class CgroupResolver:
    """cgroup id -> path within one hierarchy, for ids a probe reports without a path.

    A cgroup's id is the inode number of its directory. Inodes are unique only
    within one cgroupfs, so there is one resolver per hierarchy. An id never seen
    before triggers a walk at once (at most one per ``min_interval``, so a burst of
    new ids costs one walk): a container's first allocations are attributed even
    when it started a moment ago. An id a walk did not find is tried again only
    after ``rescan_interval`` seconds, so the ids of removed cgroups cost no walks
    in between. A cgroup removed before it was ever seen stays unresolved (None):
    probes whose events outlive cgroups walk the path in the kernel instead
    (bpf/cgroup.h).
    """

    def __init__(self, hierarchy: Hierarchy, *, rescan_interval: float = 1.0, min_interval: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hierarchy = hierarchy
        self.rescan_interval = rescan_interval
        self.min_interval = min_interval
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._missed: dict[int, float] = {}  # id -> when a walk last failed to find it
        self._last_scan = float("-inf")
        self.scans = 0

    def _scan(self) -> None:
        paths: dict[int, str] = {}
        root = self.hierarchy.mount
        for dirpath, _dirs, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue  # removed while walking
            rel = os.path.relpath(dirpath, root)
            paths[ino] = "/" if rel == "." else "/" + rel
        self._paths = paths
        self._last_scan = self._clock()
        self.scans += 1

    def path(self, cgroup_id: int) -> str | None:
        if not cgroup_id:
            return None
        found = self._paths.get(cgroup_id)
        if found is not None:
            return found
        now = self._clock()
        missed = self._missed.get(cgroup_id)
        due = missed is None or now - missed >= self.rescan_interval
        if due and now - self._last_scan >= self.min_interval:
            self._scan()
            found = self._paths.get(cgroup_id)
            if found is None:  # a walk missed it: removed, or in another hierarchy
                if len(self._missed) > 10_000:
                    self._missed.clear()
                self._missed[cgroup_id] = now
        return found
