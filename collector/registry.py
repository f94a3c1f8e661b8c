"""The collector's registry of edges.

An edge that stops heartbeating is not forgotten: it is marked down and named
in every answer (its node's rows are missing, and the user must know), until
``forget_after`` has passed without a word from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pxo.common.contract import NodeState
from pxo.common.schema import Table
from pxo.v1 import pxo_pb2


@dataclass
class EdgeEntry:
    info: pxo_pb2.NodeInfo
    last_seen: float  # monotonic
    last_seen_wall: float  # unix seconds
    state: int = NodeState.LIVE

    @property
    def node(self) -> str:
        return self.info.node

    @property
    def address(self) -> str:
        return self.info.address


class Registry:
    def __init__(self, *, expire_after: float = 6.0, forget_after: float = 24 * 3600,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.expire_after = expire_after
        self.forget_after = forget_after
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._edges: dict[str, EdgeEntry] = {}

    def register(self, info: pxo_pb2.NodeInfo) -> None:
        with self._lock:
            copy = pxo_pb2.NodeInfo()
            copy.CopyFrom(info)
            self._edges[info.node] = EdgeEntry(copy, self._clock(), self._wall())

    def heartbeat(self, node: str, address: str, sources: list[pxo_pb2.SourceStatus]) -> bool:
        """Record a heartbeat; False when the node is unknown (it must register)."""
        with self._lock:
            entry = self._edges.get(node)
            if entry is None or entry.address != address:
                return False
            entry.last_seen = self._clock()
            entry.last_seen_wall = self._wall()
            entry.state = NodeState.LIVE
            del entry.info.sources[:]
            entry.info.sources.extend(sources)
            return True

    def snapshot(self) -> list[EdgeEntry]:
        """Every known edge with its current state, sorted by node name."""
        now = self._clock()
        with self._lock:
            for node, entry in list(self._edges.items()):
                silent = now - entry.last_seen
                if silent > self.forget_after:
                    del self._edges[node]
                elif silent > self.expire_after:
                    entry.state = NodeState.DOWN
            return sorted(self._edges.values(), key=lambda e: e.node)

    def catalog(self) -> dict[str, Table]:
        """Tables any known edge has; the newest registration wins on conflicts."""
        tables: dict[str, Table] = {}
        for entry in sorted(self.snapshot(), key=lambda e: e.last_seen):
            for t in entry.info.tables:
                tables[t.name] = Table.from_proto(t)
        return tables
