"""The constants and names the processes share come from proto/ (common/contract.py)."""

from __future__ import annotations

from pxo.common.contract import NodeState, answer_state_name, node_state_name
from pxo.v1 import pxo_pb2


def test_state_names_are_the_proto_enums_lower_cased() -> None:
    assert (node_state_name(NodeState.LIVE), node_state_name(NodeState.DOWN)) == ("live", "down")
    assert [answer_state_name(v) for v in pxo_pb2.NodeStatus.State.values()] == [
        "ok", "failed", "timed_out", "down", "skipped"]
    assert answer_state_name(99) == "unknown"  # a newer peer's state
