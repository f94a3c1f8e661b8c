"""`pxo explain` across a cluster (collector/explain.py) with real processes on loopback: the
most recent matching kill wins whichever node has it, an edge that is down is named (never
dropped silently), and targets pxo cannot read are refused with the reason."""

from __future__ import annotations

from pathlib import Path

from pxo.common.contract import NodeState
from tests.helpers.seeding import seed_explained_kill, seed_store, wait_nodes
from tests.helpers.services import Service, bootstrap, http, start_cloud, start_collector, start_edge


def test_the_latest_kill_wins_and_a_dead_edge_is_named(tmp_path: Path, services: list[Service]) -> None:
    _, collector = start_collector(services, tmp_path / "collector", "--heartbeat-interval", "0.3",
                                   "--expire-after", "1.5")
    seed_explained_kill(tmp_path / "a", pid=4242)  # two minutes ago, with its evidence
    seed_store(tmp_path / "b", [4242, 77])  # five minutes ago: older
    edge_a, _ = start_edge(services, tmp_path / "a", collector, "node-a", "--sources", "[]")
    start_edge(services, tmp_path / "b", collector, "node-b", "--sources", "[]")
    wait_nodes(collector, 2)
    _, url = start_cloud(services, tmp_path / "cloud", collector)
    key = bootstrap(tmp_path / "cloud")

    status, body, _ = http("GET", f"{url}/api/v1/explain?target=4242", key=key)
    assert status == 200, body
    assert body["node"] == "node-a" and body["kill"]["comm"] == "leaky" and body["unanswered"] == []
    assert body["verdicts"][0]["rule"] == "steady_leak", body["verdicts"]
    assert {h["comm"] for h in body["holders"]} == {"leaky", "sidecar", "pause"}
    usage = next(s for s in body["series"] if s["name"] == "usage")
    assert len(usage["points"]) >= 100

    edge_a.stop()
    wait_nodes(collector, 1, state=NodeState.DOWN)
    status, body, _ = http("GET", f"{url}/api/v1/explain?target=4242", key=key)
    assert status == 200, body
    assert body["node"] == "node-b"  # the only kill left to find, and the dead edge named beside it
    assert [(u["node"], u["state"]) for u in body["unanswered"]] == [("node-a", "down")]

    status, body, _ = http("GET", f"{url}/api/v1/explain?target=/explain/leaky", key=key)
    assert status == 404
    msg = body["error"]["message"]
    assert "no kill matches '/explain/leaky'" in msg and "node-a" in msg and "edge down" in msg

    status, body, _ = http("GET", f"{url}/api/v1/explain?target=what%20is%20this", key=key)
    assert status == 400 and "no target pxo knows" in body["error"]["message"]
    status, body, _ = http("GET", f"{url}/api/v1/explain?window=3", key=key)
    assert status == 400 and "window" in body["error"]["message"]
