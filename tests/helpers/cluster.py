"""A Kubernetes cluster as the deploy tests play it: nodes on the loopback API server
(tests/helpers/kubeapi_apply.py), the controllers' status set by hand, and `pxo` pointed at it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import cli
from tests.helpers.kubeapi_apply import ApplyAPI, edge_pod

IMAGE = "registry.example/pxo:9.9.9"


def pxo(api: ApplyAPI, tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``pxo ARGS`` pointed (KUBECONFIG) at the loopback API server, HOME in tmp_path."""
    return cli.pxo(*args, env={"KUBECONFIG": str(api.kubeconfig(tmp_path)), "HOME": str(tmp_path)}, timeout=timeout)


def all_ready(api: ApplyAPI, nodes: list[str]) -> None:
    for ds in ("pxo-edge", "pxo-unpin"):  # pxo-unpin: what `pxo delete --kubernetes` runs first
        api.set_status("daemonsets", ds, {"desiredNumberScheduled": len(nodes), "numberReady": len(nodes),
                                          "updatedNumberScheduled": len(nodes)})
    for name in ("pxo-collector", "pxo-cloud"):
        api.set_status("deployments", name, {"availableReplicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                                             "replicas": 1})
    for n in nodes:
        api.put_pod(edge_pod(n))


def cluster(api: ApplyAPI, *kernels: str) -> list[str]:
    names = [f"node-{i + 1}" for i in range(len(kernels))]
    for name, kernel in zip(names, kernels, strict=True):
        api.add_node(name, kernel=kernel)
    return names


def created(api: ApplyAPI) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in api.objects() if o["kind"] not in ("Node", "Pod")}
