"""Checked by machines: mypy --strict over all of pxo, and the layer rules of DESIGN.md as
import-linter contracts (pyproject.toml), both run by scripts/typecheck.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_types_and_import_contracts_hold() -> None:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "typecheck.sh")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Success: no issues found" in out.stdout and "0 broken" in out.stdout
