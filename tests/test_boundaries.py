"""The boundaries of DESIGN.md, checked on the import graph: the collector does
not import edge code, the cloud talks only to collectors, nothing but the edge
imports bcc."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "collector": ("pxo.edge", "pxo.cloud", "pxo.cli", "bcc"),
    "cloud": ("pxo.edge", "pxo.collector", "pxo.cli", "bcc"),
    "common": ("pxo.edge", "pxo.collector", "pxo.cloud", "pxo.cli", "bcc"),
    # The CLI reaches pxo only over HTTP; `pxo oom-drill` is a local action
    # that uses the edge's drill module, imported only inside that command.
    "cli": ("pxo.collector", "pxo.cloud", "bcc", "grpc", "duckdb"),
}


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_boundaries(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad


def test_cli_imports_edge_code_only_for_the_drill() -> None:
    for path in (ROOT / "cli").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (mod or "").startswith("pxo.edge"), path
