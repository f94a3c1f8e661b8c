"""The guest of tests/helpers/guest.py, booted once from Debian bookworm's cloud
kernel: it must look like a fresh node of that kernel and hand back the
command's output and exit status. Needs root and `scripts/kernels.sh bookworm`."""

from __future__ import annotations

import pytest

from tests.helpers.guest import GuestError, GuestResult, Kernel, run_in_guest

pytestmark = pytest.mark.requires_bpf  # root: qemu's virtiofsd serves the host's files as root

SUITE = "bookworm"

# One boot: the probe prints facts as name=value lines, then its last command,
# `sh -c 'exit 7'`, gives the guest's exit status.
PROBE = r"""
echo "release=$(uname -r)"
echo "hostname=$(hostname)"
echo "cgroup_fs=$(stat -f -c %T /sys/fs/cgroup)"
echo "controllers=$(cat /sys/fs/cgroup/cgroup.controllers)"
echo "subtree_control=$(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "tracing_entries=$(ls -A /sys/kernel/tracing 2>/dev/null | wc -l)"
echo "btf=$(test -s /sys/kernel/btf/vmlinux && echo yes)"
echo "headers=$(test -f /lib/modules/$(uname -r)/build/include/generated/autoconf.h \
    && test -f /lib/modules/$(uname -r)/source/include/linux/sched.h && echo yes)"
echo "read_main=$(test -r /work/main/pyproject.toml && head -c 1 /work/main/pyproject.toml >/dev/null && echo yes)"
echo "write_main=$(touch /work/main/.guest-write-probe 2>/dev/null && echo yes || echo no)"
echo "write_tmp=$(echo x >/tmp/guest-probe && echo yes || echo no)"
sed 's/^/mount=/' /proc/mounts
exec sh -c 'exit 7'
"""


@pytest.fixture(scope="module")
def guest() -> GuestResult | GuestError:
    try:
        return run_in_guest(SUITE, ["sh", "-c", PROBE], cwd="/", env={}, timeout=180)
    except GuestError as e:  # each test fails with the reason (e.g. "run scripts/kernels.sh bookworm")
        return e


def facts(guest: GuestResult | GuestError) -> dict[str, str]:
    if isinstance(guest, GuestError):
        pytest.fail(str(guest), pytrace=False)
    out: dict[str, str] = {}
    for line in guest.output.splitlines():
        name, sep, value = line.partition("=")
        if sep and name != "mount":
            out[name] = value
    return out


def mounts(guest: GuestResult | GuestError) -> list[list[str]]:
    facts(guest)
    assert isinstance(guest, GuestResult)
    return [line.removeprefix("mount=").split() for line in guest.output.splitlines() if line.startswith("mount=")]


def test_guest_runs_the_fetched_kernel(guest: GuestResult | GuestError) -> None:
    f = facts(guest)
    assert isinstance(guest, GuestResult)
    assert f["release"] == Kernel.load(SUITE).release == guest.release
    assert f["hostname"] == f"guest-{SUITE}"


def test_guest_returns_the_exit_status(guest: GuestResult | GuestError) -> None:
    facts(guest)
    assert isinstance(guest, GuestResult)
    assert guest.exit_code == 7, guest.output


def test_guest_cgroup_v2_only_with_memory_enabled(guest: GuestResult | GuestError) -> None:
    f = facts(guest)
    assert f["cgroup_fs"] == "cgroup2fs"
    assert "memory" in f["controllers"].split()
    assert "memory" in f["subtree_control"].split()
    cgroup_mounts = [m for m in mounts(guest) if m[2] in ("cgroup", "cgroup2")]
    assert [(m[1], m[2]) for m in cgroup_mounts] == [("/sys/fs/cgroup", "cgroup2")]


def test_guest_has_no_tracefs_debugfs_or_bpffs(guest: GuestResult | GuestError) -> None:
    f = facts(guest)
    fstypes = {m[2] for m in mounts(guest)}
    assert not fstypes & {"tracefs", "debugfs", "bpf"}, fstypes
    assert f["tracing_entries"] == "0"  # /sys/kernel/tracing: an empty directory (or absent)


def test_guest_has_btf(guest: GuestResult | GuestError) -> None:
    assert facts(guest)["btf"] == "yes"


def test_guest_finds_its_kernel_headers(guest: GuestResult | GuestError) -> None:
    assert facts(guest)["headers"] == "yes"


def test_guest_reads_the_repository_but_cannot_write_it(guest: GuestResult | GuestError) -> None:
    f = facts(guest)
    assert f["read_main"] == "yes"
    assert f["write_main"] == "no"
    assert f["write_tmp"] == "yes"
