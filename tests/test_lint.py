"""ruff over the whole tree (its rules are in pyproject.toml), and the shape of tests/: code that
tests share lives in tests/helpers, and nothing else under tests/ is imported by another file."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([ruff, "check", "--output-format", "concise", str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def imported_test_modules(tree: ast.AST) -> set[str]:
    """The modules under ``tests`` that this code imports (at any depth, in any function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            if node.module in ("tests", "tests.helpers"):  # from tests import edge; from tests.helpers import sink
                out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.add("tests.<relative import>")
    return {m for m in out if m == "tests" or m.startswith("tests.")}


def test_tests_import_only_tests_helpers() -> None:
    """A test module, a conftest.py or a data folder is never imported: fixtures reach tests
    through pytest, shared code through tests/helpers."""
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        for module in sorted(imported_test_modules(ast.parse(path.read_text(), str(path)))):
            if module != "tests.helpers" and not module.startswith("tests.helpers."):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "move what these share into tests/helpers:\n" + "\n".join(wrong)


def test_every_python_package_is_installed() -> None:
    """Every folder of pxo's code with an __init__.py is in pyproject.toml's package list: a missing
    one works in the editable install of the tree and is absent from the image (pxo.collector.plan was)."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(cfg["packages"]), cfg["package-dir"]
    missing = []
    for package, folder in dirs.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(base)
            name = ".".join((package, *rel.parts))
            if name not in listed:
                missing.append(name)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
