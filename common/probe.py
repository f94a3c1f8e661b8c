"""One health probe, as a kubelet would make it, from inside a container:

    python -m pxo.common.probe grpc 127.0.0.1:50801
    python -m pxo.common.probe http http://127.0.0.1:8700/api/v1/health

Exit 0 when the component answers SERVING (gRPC health) or 200 (HTTP), 1 with one
line on stderr otherwise. `pxo deploy --containers` gives each container its pod
spec's probe as a podman health check of this command, so the deploy itself never
dials a component (the CLI talks to the cloud only).
"""

from __future__ import annotations

import sys
import urllib.request


def check(kind: str, target: str, timeout: float = 2.0) -> str:
    """'' when healthy, else why not."""
    if kind == "http":
        try:
            with urllib.request.urlopen(target, timeout=timeout) as resp:
                return "" if resp.status == 200 else f"HTTP {resp.status}"
        except OSError as exc:
            return str(exc)
    if kind == "grpc":
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(target) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            except grpc.RpcError as exc:
                return f"gRPC health: {exc.code().name}"
        return "" if resp.status == health_pb2.HealthCheckResponse.SERVING else f"gRPC health: {resp.status}"
    return f"unknown probe kind {kind!r} (grpc or http)"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pxo.common.probe grpc|http TARGET", file=sys.stderr)
        return 2
    why = check(argv[0], argv[1])
    if why:
        print(why, file=sys.stderr)
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
