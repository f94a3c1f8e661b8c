"""The edge registry's clock-driven states, with an injected clock."""

from __future__ import annotations

from pxo.collector.registry import Registry
from pxo.common.contract import NodeState
from pxo.v1 import pxo_pb2


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def info(node: str, address: str = "127.0.0.1:1") -> pxo_pb2.NodeInfo:
    return pxo_pb2.NodeInfo(node=node, address=address, tables=[pxo_pb2.Table(name="oom_events")])


def test_silent_edges_go_down_then_are_forgotten() -> None:
    clock = Clock()
    reg = Registry(expire_after=6, forget_after=60, clock=clock, wall=clock)
    reg.register(info("a"))
    assert [(e.node, e.state) for e in reg.snapshot()] == [("a", NodeState.LIVE)]
    clock.t += 7
    assert [(e.node, e.state) for e in reg.snapshot()] == [("a", NodeState.DOWN)]
    assert "oom_events" in reg.catalog()  # a down edge's tables stay known
    assert reg.heartbeat("a", "127.0.0.1:1", [])  # it comes back
    assert reg.snapshot()[0].state == NodeState.LIVE
    clock.t += 61
    assert reg.snapshot() == []


def test_unknown_or_moved_edges_must_register_again() -> None:
    reg = Registry()
    assert not reg.heartbeat("a", "127.0.0.1:1", [])  # e.g. the collector restarted
    reg.register(info("a"))
    running = pxo_pb2.SourceStatus(name="oom_bpf", state=pxo_pb2.SourceStatus.RUNNING)
    assert reg.heartbeat("a", "127.0.0.1:1", [running])
    assert reg.snapshot()[0].info.sources[0].state == pxo_pb2.SourceStatus.RUNNING
    assert not reg.heartbeat("a", "127.0.0.1:2", [])  # restarted on another port
