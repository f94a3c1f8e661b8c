"""docs/tables.md, written from the tables' own declarations (schemas are data).

    python -m pxo.edge.tabledoc > docs/tables.md

tests/edge/test_tabledoc.py fails when the committed file differs from what
this prints, so the reference never drifts from the code.
"""

from __future__ import annotations

import sys

from pxo.edge.sources import SOURCES, all_tables


def render() -> str:
    owners = {t.name: cls.name for cls in SOURCES.values() for t in cls.tables}
    out = [
        "# pxo tables",
        "",
        "Every edge has every table below (the collector adds a `node` column to each answer).",
        "Generated from the declarations next to each source by `python -m pxo.edge.tabledoc`;",
        "do not edit by hand. Columns named `*_bytes` are bytes; times are UTC.",
        "",
    ]
    for t in sorted(all_tables(), key=lambda t: t.name):
        out += [f"## {t.name}", "", t.description, "", f"Filled by the `{owners[t.name]}` source.", "",
                "| column | type | description |", "|---|---|---|"]
        out += [f"| `{c.name}` | {c.type} | {c.description.replace('|', '/')} |" for c in t.columns]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
