"""Edge sources by name, and how each is wired. Every source declares its tables next to itself."""

from __future__ import annotations

from dataclasses import replace

from pxo.common.schema import Table
from pxo.edge.attribution import with_attribution
from pxo.edge.sources.alloc import AllocRateBpfSource
from pxo.edge.sources.alloc_faults import AllocFaultsSource
from pxo.edge.sources.base import Source, SourceContext, SourceStatus
from pxo.edge.sources.cgroupfs import ContainerMemorySource
from pxo.edge.sources.exit import ProcessExitBpfSource
from pxo.edge.sources.oom import OomSource
from pxo.edge.sources.procfs import ProcessMemorySource
from pxo.edge.sources.reclaim import ReclaimBpfSource
from pxo.edge.sources.risk import OomRiskSource
from pxo.edge.sources.signal import KillBpfSource
from pxo.edge.sources.status import ProbeStatusSource

# (alloc_bpf before alloc_faults: a table's documented source is the last that fills it)
SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (OomSource, KillBpfSource, ProcessExitBpfSource, AllocRateBpfSource, AllocFaultsSource,
                ReclaimBpfSource, ContainerMemorySource, OomRiskSource, ProcessMemorySource, ProbeStatusSource)
}

# Run only when named: alloc_bpf counts alloc_rate exactly at a cost per page
# (bench/overhead.py); alloc_faults fills the same table by default.
OPT_IN = frozenset({AllocRateBpfSource.name})
DEFAULT_SOURCES = [name for name in SOURCES if name not in OPT_IN]
# Alternatives that fill the same table: when both are named, the first is left out
# (an edge started with every source runs the exact alloc_rate only, never both).
SUPERSEDED = {AllocFaultsSource.name: AllocRateBpfSource.name}


def all_tables() -> list[Table]:
    """Every table any source fills, with the attribution columns the edge's enricher adds
    (edge/attribution.py): each edge has them all, so every node has one catalog."""
    seen: dict[str, Table] = {}
    for cls in SOURCES.values():
        for t in cls.tables:
            seen.setdefault(t.name, with_attribution(t))
    return list(seen.values())


def build_sources(names: list[str], ctx: SourceContext) -> list[Source]:
    """The named sources, each given the edge's context; ``ctx.statuses`` is extended so that
    probe_status also sees every source built here."""
    built: list[Source] = []
    outer = ctx.statuses

    def statuses() -> list[SourceStatus]:
        return [s.status for s in built if s.name != ProbeStatusSource.name] + outer()

    ctx = replace(ctx, statuses=statuses)
    built.extend(SOURCES[name](ctx) for name in names if SUPERSEDED.get(name) not in names)
    return built
