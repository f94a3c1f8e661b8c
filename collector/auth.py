"""The cluster token: the cloud proves itself to the collector.

The cloud sends ``x-pxo-cluster-token: <token>`` as gRPC metadata on every
call it makes (Query, Follow, ListNodes, ListTables); this server interceptor refuses
those calls with UNAUTHENTICATED unless the token matches (compared in
constant time). Edge registration and heartbeats, and the health service, are
not the cloud's calls and pass through. With no token configured the
interceptor is not installed at all (development and the existing tests).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import grpc

from pxo.common.contract import CLUSTER_TOKEN_METADATA as TOKEN_METADATA

CLOUD_METHODS = frozenset({
    "/pxo.v1.Collector/Query",
    "/pxo.v1.Collector/Follow",
    "/pxo.v1.Collector/ListNodes",
    "/pxo.v1.Collector/ListTables",
    "/pxo.v1.Collector/Explain",
})


def _deny(message: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return handler


class ClusterTokenInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]  # grpc-stubs: generic
    def __init__(self, token: str, *, methods: frozenset[str] = CLOUD_METHODS) -> None:
        if not token:
            raise ValueError("a cluster token interceptor needs a token")
        self._token = token.encode()
        self._methods = methods

    def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self._methods:
            return handler
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_METADATA:
                presented = value if isinstance(value, str) else value.decode(errors="replace")
        if hmac.compare_digest(presented.encode(), self._token):
            return handler
        deny = _deny("missing cluster token" if not presented else "wrong cluster token")
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)
