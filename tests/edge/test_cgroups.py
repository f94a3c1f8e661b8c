"""cgroupfs discovery, scratch cgroups and id -> path resolution on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from pxo.edge.cgroups import CgroupResolver, Hierarchy, ScratchCgroup, cgroup_of, hierarchies, memory_hierarchy


def test_mountinfo_fixture(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 22 0:26 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory\n"
        "31 22 0:27 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw\n"
        "32 22 0:28 / /proc rw - proc proc rw\n")
    hs = hierarchies(info)
    assert [(h.version, str(h.mount)) for h in hs] == [(1, "/sys/fs/cgroup/memory"), (2, "/sys/fs/cgroup/unified")]
    assert memory_hierarchy(info).version == 1
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/a/b\n1:cpu:/\n0::/c\n")
    assert cgroup_of(hs[0], proc) == "/a/b" and cgroup_of(hs[1], proc) == "/c"


@pytest.mark.requires_root("creates a cgroup")
def test_scratch_cgroup_is_beneath_our_own_and_resolves_by_id() -> None:
    h = memory_hierarchy()
    own = cgroup_of(h)
    with ScratchCgroup(32 << 20, prefix="pxo-test") as cg:
        assert cg.path.startswith(own.rstrip("/") + "/pxo-test-")
        assert cg.dir.is_dir()
        resolver = CgroupResolver(h, rescan_interval=0)
        assert resolver.path(cg.dir.stat().st_ino) == cg.path
        assert resolver.path(1 << 60) is None
    assert not cg.dir.exists()


def test_resolver_finds_a_new_cgroup_at_once_and_walks_little_for_gone_ones(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    now = [0.0]
    r = CgroupResolver(Hierarchy(2, tmp_path, frozenset()), rescan_interval=10, min_interval=0.05,
                       clock=lambda: now[0])
    assert r.path((tmp_path / "a" / "b").stat().st_ino) == "/a/b" and r.scans == 1
    (tmp_path / "c").mkdir()
    assert r.path((tmp_path / "c").stat().st_ino) is None  # a burst of new ids: one walk per min_interval
    now[0] = 0.1
    assert r.path((tmp_path / "c").stat().st_ino) == "/c" and r.scans == 2  # a new cgroup: found at once
    gone, now[0] = 1 << 60, 0.2
    assert r.path(gone) is None and r.scans == 3  # never seen: one walk
    now[0] = 5
    assert r.path(gone) is None and r.scans == 3  # missed before: no walk until rescan_interval
    now[0] = 11
    assert r.path(gone) is None and r.scans == 4
