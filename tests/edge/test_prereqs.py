"""An edge that cannot load eBPF says what is missing, in one line, and exits non-zero."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pxo.edge.prereqs import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, can_load_bpf, missing_for_bpf

EDGE = ["-m", "pxo.edge", "--listen", "127.0.0.1:0", "--require-bpf"]


def no_bcc(name: str) -> object:
    raise ImportError(name)


def test_everything_missing_is_named(tmp_path: Path) -> None:
    missing = missing_for_bpf(caps=0, import_module=no_bcc, release="9.9.9-test",
                              modules_root=tmp_path, btf_path=tmp_path / "vmlinux")
    # in the order a person fixes them: privileges, BTF, BCC, headers
    assert [m.split(":")[0] for m in missing] == ["root", "BTF", "BCC", "kernel headers"]
    assert "python3-bpfcc" in missing[2] and "linux-headers-9.9.9-test" in missing[3]


def test_headers_found_in_the_modules_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    (tmp_path / "9.9.9" / "build" / "include" / "linux").mkdir(parents=True)
    (tmp_path / "9.9.9" / "build" / "include" / "linux" / "kconfig.h").touch()
    (tmp_path / "vmlinux").touch()
    full = 1 << CAP_SYS_ADMIN
    assert missing_for_bpf(caps=full, import_module=lambda n: None, release="9.9.9",
                           modules_root=tmp_path, btf_path=tmp_path / "vmlinux") == []


def run_edge(data_dir: Path, *, prefix: list[str] = (), code: str = "", env: dict | None = None,
             ) -> subprocess.CompletedProcess[str]:
    args = ["-c", code, *EDGE[2:]] if code else EDGE
    return subprocess.run([*prefix, sys.executable, *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err and err[-1].startswith("pxo-edge: error: cannot load eBPF programs; missing"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[-1]


def test_capabilities_that_allow_loading() -> None:
    assert can_load_bpf(1 << CAP_SYS_ADMIN)
    assert can_load_bpf(1 << CAP_BPF | 1 << CAP_PERFMON)
    assert not can_load_bpf(1 << CAP_BPF) and not can_load_bpf(0)


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_edge_without_root_privileges(tmp_path: Path) -> None:
    # Same user, every capability dropped: what a non-root or unprivileged container sees.
    proc = run_edge(tmp_path, prefix=["setpriv", "--bounding-set=-all", "--inh-caps=-all"])
    assert_one_clear_line(proc, "root privileges", "privileged container")


def test_edge_without_bcc(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['bcc'] = None; from pxo.edge.main import main; sys.exit(main())"
    assert_one_clear_line(run_edge(tmp_path, code=hide), "BCC", "python3-bpfcc")


def test_edge_without_kernel_headers(tmp_path: Path) -> None:
    proc = run_edge(tmp_path, env={"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers")})
    assert_one_clear_line(proc, "kernel headers", "scripts/setup.sh")


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, *EDGE, "--sources", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("pxo-edge: error: --sources: unknown source(s) bogus; known: oom")
