"""Edge sources by name, and how each is wired. Every source declares its tables next to itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pxo.common.schema import Table
from pxo.edge.attribution import with_attribution
from pxo.edge.sources.alloc import AllocRateBpfSource
from pxo.edge.sources.base import Sink, Source, SourceStatus
from pxo.edge.sources.cgroupfs import ContainerMemorySource
from pxo.edge.sources.exit import ProcessExitBpfSource
from pxo.edge.sources.oom import OomSource
from pxo.edge.sources.procfs import ProcessMemorySource
from pxo.edge.sources.reclaim import ReclaimBpfSource
from pxo.edge.sources.signal import KillBpfSource
from pxo.edge.sources.status import ProbeStatusSource

SOURCES: dict[str, type[Source]] = {
    cls.name: cls
    for cls in (OomSource, KillBpfSource, ProcessExitBpfSource, AllocRateBpfSource, ReclaimBpfSource,
                ContainerMemorySource, ProcessMemorySource, ProbeStatusSource)
}


def all_tables() -> list[Table]:
    """Every table any source fills, with the attribution columns the edge's enricher adds
    (edge/attribution.py): each edge has them all, so every node has one catalog."""
    seen: dict[str, Table] = {}
    for cls in SOURCES.values():
        for t in cls.tables:
            seen.setdefault(t.name, with_attribution(t))
    return list(seen.values())


def build_sources(names: list[str], *, sink: Sink, use_bpf: bool = True,
                  oom_recorded: Callable[..., bool] | None = None,
                  more_status: Callable[[], list[SourceStatus]] = list) -> list[Source]:
    """The named sources, each given what it needs from the edge."""
    built: list[Source] = []
    for name in names:
        cls = SOURCES[name]
        kwargs: dict[str, Any] = {"sink": sink}
        if cls is OomSource:
            kwargs.update(use_bpf=use_bpf, recorded=oom_recorded)
        elif cls is ProbeStatusSource:
            kwargs.update(statuses=lambda: [s.status for s in built if s.name != ProbeStatusSource.name]
                          + more_status())
        built.append(cls(**kwargs))
    return built
