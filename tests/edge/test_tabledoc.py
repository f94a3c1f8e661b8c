"""docs/tables.md is what the table declarations say."""

from __future__ import annotations

from pathlib import Path

from pxo.edge.tabledoc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "tables.md"


def test_docs_match_the_declarations() -> None:
    assert DOC.read_text() == render(), "regenerate: python -m pxo.edge.tabledoc > docs/tables.md"
