"""Edge sources by name. Every source declares its tables next to itself."""

from __future__ import annotations

from pxo.common.schema import Table
from pxo.edge.sources.base import Source
from pxo.edge.sources.oom import OomBpfSource

SOURCES: dict[str, type[Source]] = {
    OomBpfSource.name: OomBpfSource,
}


def all_tables() -> list[Table]:
    """Every table any source fills: each edge has them all, so every node has one catalog."""
    seen: dict[str, Table] = {}
    for cls in SOURCES.values():
        for t in cls.tables:
            seen.setdefault(t.name, t)
    return list(seen.values())
