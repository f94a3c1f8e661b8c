"""`pxo explain` across the cluster: find which node has the kill a target names, then
ask that node (and only it) to explain it.

Every live edge is asked ``FindKill`` in parallel; the most recent match wins (its time
and kind are passed back so the edge explains exactly that kill). An edge that is down,
times out or fails is reported in ``Explanation.unanswered``, never dropped silently: a
newer kill might be on it. When no edge has a match and some did not answer, the error
says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures

import grpc

from pxo.collector.registry import EdgeEntry, Registry
from pxo.common.contract import NodeState
from pxo.v1 import pxo_pb2, pxo_pb2_grpc

State = pxo_pb2.NodeStatus.State


class ExplainError(Exception):
    """Why there is no explanation: a gRPC status code and one sentence."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def explain(request: pxo_pb2.ExplainRequest, *, registry: Registry, stub: Callable[[str], pxo_pb2_grpc.EdgeStub],
            timeout: float, pool: futures.Executor) -> pxo_pb2.Explanation:
    entries = registry.snapshot()
    unanswered: list[pxo_pb2.NodeStatus] = []
    asks: dict[futures.Future[pxo_pb2.KillMatch], EdgeEntry] = {}
    for e in entries:
        if e.state == NodeState.DOWN:
            silent = time.time() - e.last_seen_wall
            unanswered.append(pxo_pb2.NodeStatus(node=e.node, state=State.DOWN,
                                                 detail=f"edge down: no heartbeat for {silent:.0f} s"))
            continue
        asks[pool.submit(stub(e.address).FindKill, request, timeout=timeout)] = e
    matches: list[tuple[pxo_pb2.KillMatch, EdgeEntry]] = []
    for fut, e in asks.items():
        try:
            m = fut.result()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # the target itself: the same on every edge
                raise ExplainError(grpc.StatusCode.INVALID_ARGUMENT, exc.details() or "bad target") from exc
            unanswered.append(pxo_pb2.NodeStatus(node=e.node, state=_state(exc), detail=_detail(exc, e, timeout)))
            continue
        if m.found:
            matches.append((m, e))
    if not matches:
        what = f"no kill matches {request.target!r}" if request.target else "no kill has been recorded"
        asked = len(entries) - len(unanswered)
        where = f" on the {asked} edge{'s' if asked != 1 else ''} that answered"
        if unanswered:
            where += "; not asked or no answer: " + ", ".join(f"{u.node} ({u.detail})" for u in unanswered)
        raise ExplainError(grpc.StatusCode.NOT_FOUND, what + where)
    m, e = max(matches, key=lambda me: me[0].time_unix_us)
    one = pxo_pb2.ExplainRequest(target=request.target, window_s=request.window_s, time_unix_us=m.time_unix_us,
                                 kind=m.kind)
    try:
        out: pxo_pb2.Explanation = stub(e.address).Explain(one, timeout=timeout)
    except grpc.RpcError as exc:
        raise ExplainError(exc.code() if exc.code() != grpc.StatusCode.NOT_FOUND else grpc.StatusCode.UNAVAILABLE,
                           f"node {e.node} has the kill but could not explain it: {_detail(exc, e, timeout)}") from exc
    out.unanswered.extend(unanswered)
    return out


def _state(exc: grpc.RpcError) -> pxo_pb2.NodeStatus.State:
    return State.TIMED_OUT if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else State.FAILED


def _detail(exc: grpc.RpcError, e: EdgeEntry, timeout: float) -> str:
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g} s"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return f"edge unreachable at {e.address}"
    return exc.details() or exc.code().name
