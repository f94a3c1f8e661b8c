"""The constants the processes share, read from proto/ (their one home; see pxo.proto's
"constants" section), so no two files are kept in sync by comment."""

from __future__ import annotations

from pxo.v1 import pxo_pb2

# The gRPC metadata key of the cluster token the cloud sends its collector.
CLUSTER_TOKEN_METADATA: str = (
    pxo_pb2.DESCRIPTOR.services_by_name["Collector"].GetOptions()
    .Extensions[pxo_pb2.cluster_token_metadata])  # type: ignore[index]  # typeshed: extension descriptors
# The longest query text, pipe or SQL, in characters: the cloud, the collector and the SQL gate.
MAX_QUERY_CHARS: int = pxo_pb2.MAX_QUERY_CHARS

NodeState = pxo_pb2.NodeEntry.State
SourceState = pxo_pb2.SourceStatus.State


def node_state_name(state: int) -> str:
    """"live" or "down", as the REST API and the CLI show it."""
    return pxo_pb2.NodeEntry.State.Name(state).lower()


def answer_state_name(state: int) -> str:
    """"ok", "failed", "timed_out", "down" or "skipped", as the REST API, the CLI and the metrics
    show a node's part of an answer; "unknown" for a state this build does not know (a newer peer's)."""
    try:
        return pxo_pb2.NodeStatus.State.Name(state).lower()
    except ValueError:
        return "unknown"


def source_state_name(state: int) -> str:
    """"running", "degraded", "failed" or "stopped"."""
    return pxo_pb2.SourceStatus.State.Name(state).lower()


def source_state(name: str) -> pxo_pb2.SourceStatus.State:
    """The proto enum of a source's state, "running" and the like."""
    value: pxo_pb2.SourceStatus.State = pxo_pb2.SourceStatus.State.Value(name.upper())  # type: ignore[assignment]
    return value
