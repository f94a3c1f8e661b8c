"""What `pxo deploy --kubernetes` applies is a working mutual-TLS cluster: the real
collector, edge and cloud started as processes on loopback with exactly the
environment of the pod templates the deploy sent to the loopback API server
(tests/helpers/kubeapi_apply.py) and the files of the Secrets it created, as the kubelet
would mount them. Only what a kubelet does is played here: the Secret volumes
become files, fieldRef and secretKeyRef values are resolved, and 0.0.0.0:<port>
listens on 127.0.0.1:0 (any free port). No real cluster is involved."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pxo.common.addr import read_addr_file
from pxo.v1 import pxo_pb2, pxo_pb2_grpc
from tests.helpers.cluster import IMAGE, all_ready, cluster, created, pxo
from tests.helpers.kubeapi_apply import ApplyAPI
from tests.helpers.services import Service, bootstrap, http


def pod_spec(api: ApplyAPI, name: str) -> dict[str, Any]:
    (obj,) = [o for o in api.objects("daemonsets") + api.objects("deployments") if o["metadata"]["name"] == name]
    return obj["spec"]["template"]["spec"]


def kubelet(api: ApplyAPI, name: str, root: Path, subst: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet makes it, its Secret volumes written under ``root``
    (the mount path replaced by that directory in the values); ``subst`` rewrites values further."""
    spec = pod_spec(api, name)
    (c,) = spec["containers"]
    objs = created(api)
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if secret is None:
            continue
        assert m["readOnly"] is True
        target = root / m["name"]
        target.mkdir(mode=0o700, parents=True)
        for k, v in objs[("Secret", secret["secretName"])]["data"].items():
            (target / k).write_bytes(base64.b64decode(v))
            (target / k).chmod(secret["defaultMode"])
        subst = {m["mountPath"]: str(target), **subst}
    field_refs = {"spec.nodeName": "node-1", "status.podIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for e in c["env"]:
        if "value" in e:
            value = re.sub(r"\$\((\w+)\)", lambda mm: env[mm[1]], e["value"])  # $(VAR), as the kubelet does
        elif "fieldRef" in e["valueFrom"]:
            value = field_refs[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            value = base64.b64decode(objs[("Secret", ref["name"])]["data"][ref["key"]]).decode()
        value = re.sub(r"^0\.0\.0\.0:\d+$", "127.0.0.1:0", value)
        for a, b in subst.items():
            value = value.replace(a, b)
        env[e["name"]] = value
    return env


def test_the_deployed_pods_talk_mutual_tls(api: ApplyAPI, tmp_path: Path, services: list[Service]) -> None:
    all_ready(api, cluster(api, "6.18.0"))
    r = pxo(api, tmp_path, "deploy", "--kubernetes", "--image", IMAGE)
    assert r.returncode == 0, r.stderr

    cdir = tmp_path / "collector"
    env = kubelet(api, "pxo-collector", tmp_path / "pods" / "collector", {"/tmp/pxo": str(cdir)})
    assert env["PXO_COLLECTOR_TLS_KEY"].startswith(str(tmp_path / "pods"))
    collector = Service("collector", [], cdir, env=env)
    services.append(collector)
    collector_addr = collector.wait_addr()
    health = read_addr_file(cdir / "health.addr")
    assert health and health != collector_addr

    edir = tmp_path / "edge"
    env = kubelet(api, "pxo-edge", tmp_path / "pods" / "edge",
                  {"/var/lib/pxo/edge": str(edir), "pxo-collector.pxo.svc:50700": collector_addr})
    env.pop("PXO_EDGE_ADVERTISE")  # the pod IP and its fixed port; here the port is any: the bound address
    env["PXO_EDGE_SOURCES"] = "[]"  # the one setting not in the manifest: no eBPF in this test
    edge = Service("edge", [], edir, env=env)
    services.append(edge)
    edge_addr = edge.wait_addr()

    wdir = tmp_path / "cloud"
    env = kubelet(api, "pxo-cloud", tmp_path / "pods" / "cloud",
                  {"/var/lib/pxo/cloud": str(wdir), "pxo-collector.pxo.svc:50700": collector_addr})
    env["PXO_CLOUD_HOST"], env["PXO_CLOUD_PORT"] = "127.0.0.1", "0"
    cloud = Service("cloud", ["serve"], wdir, env=env)
    services.append(cloud)
    url = cloud.wait_addr()
    key = bootstrap(wdir)

    # the edge registered over TLS with its Secret's certificate; the cloud asks over TLS with its own
    end = time.monotonic() + 20
    while True:
        status, body, _ = http("GET", url + "/api/v1/nodes", key=key)
        assert status == 200, body
        if [n["node"] for n in body["nodes"] if n["state"] == "live"] == ["node-1"] or time.monotonic() > end:
            break
        time.sleep(0.2)
    assert [n["node"] for n in body["nodes"] if n["state"] == "live"] == ["node-1"], (edge.log(), collector.log())
    assert "mutual TLS" in collector.log() and "mutual TLS" in edge.log()

    # the probes' ports answer health in plain text, and nothing else; the gRPC ports want a certificate
    for addr, service in ((health, "pxo.v1.Collector"), (read_addr_file(edir / "health.addr"), "pxo.v1.Edge")):
        with grpc.insecure_channel(addr) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for addr in (collector_addr, edge_addr):
        with grpc.insecure_channel(addr) as ch:
            try:
                pxo_pb2_grpc.CollectorStub(ch).ListNodes(pxo_pb2.ListNodesRequest(), timeout=5)
                raise AssertionError(f"{addr} answered a plain-text call")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
