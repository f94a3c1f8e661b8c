"""An edge that cannot load eBPF says what is missing, in one line, and exits non-zero."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pxo.edge.prereqs import missing_for_bpf

EDGE = ["-m", "pxo.edge", "--listen", "127.0.0.1:0"]


def no_bcc(name: str) -> object:
    raise ImportError(name)


def test_everything_missing_is_named(tmp_path: Path) -> None:
    missing = missing_for_bpf(euid=1000, import_module=no_bcc, release="9.9.9-test",
                              modules_root=tmp_path, btf_path=tmp_path / "vmlinux")
    assert [m.split(":")[0] for m in missing] == ["root", "BCC", "kernel headers", "BTF"]
    assert "python3-bpfcc" in missing[1] and "linux-headers-9.9.9-test" in missing[2]


def test_headers_found_in_the_modules_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    (tmp_path / "9.9.9" / "build" / "include" / "linux").mkdir(parents=True)
    (tmp_path / "9.9.9" / "build" / "include" / "linux" / "kconfig.h").touch()
    (tmp_path / "vmlinux").touch()
    assert missing_for_bpf(euid=0, import_module=lambda n: None, release="9.9.9",
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


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_edge_without_root() -> None:
    data = Path(tempfile.mkdtemp(prefix="pxo-noroot-"))
    try:
        data.chmod(0o777)
        proc = run_edge(data, prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        assert_one_clear_line(proc, "root", "privileged")
    finally:
        shutil.rmtree(data)


def test_edge_without_bcc(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['bcc'] = None; from pxo.edge.main import main; sys.exit(main())"
    assert_one_clear_line(run_edge(tmp_path, code=hide), "BCC", "python3-bpfcc")


def test_edge_without_kernel_headers(tmp_path: Path) -> None:
    proc = run_edge(tmp_path, env={"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers")})
    assert_one_clear_line(proc, "kernel headers", "scripts/setup.sh")


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, *EDGE, "--sources", "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "pxo-edge: error: --sources: unknown source(s) bogus; known: oom_bpf"
