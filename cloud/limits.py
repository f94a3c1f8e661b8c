"""Request limits: body size and read time (an ASGI middleware, before any route runs), a
per-key token-bucket rate limit, and the number of follow streams served at once.

The rate limiter's buckets and the follow streams' count are the only things the cloud
keeps in memory alone: seconds of history and live connections, which a restart
rightly forgets.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pxo.cloud.errors import (
    CloudError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    error_response,
)
from pxo.common.slots import Slot, Slots, SlotsFull

MAX_FOLLOWS = 16  # follow streams per cloud: each holds a worker thread while it waits for rows


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes`` (declared or actual), 408 for a client
    that takes more than ``read_timeout`` seconds to send it. The body is read in
    full here (it is small: at most ``max_bytes``), so a slow client never holds a
    worker thread: routes run in threads only once the whole body is in."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = PayloadTooLarge(f"the request body is over {self.max_bytes} bytes")
        if self.max_bytes and declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(too_large, scope, receive, send)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH", "DELETE"):
            await self.app(scope, receive, send)
            return
        # The body is read here, in full and within the deadline, before any route runs.
        chunks: list[bytes] = []
        seen = 0
        deadline = time.monotonic() + self.read_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                await _refuse(RequestTimeout(f"the request body took more than {self.read_timeout:g} s to arrive"),
                              scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            seen += len(message.get("body", b""))
            if self.max_bytes and seen > self.max_bytes:
                await _refuse(too_large, scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(exc: CloudError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer before the routes, as they would, and close the connection: the rest of the body is unread."""
    await error_response(exc, headers={"Connection": "close"})(scope, receive, send)


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def admit(self, key: str) -> None:
        """Take a token for ``key``, or TooManyRequests with the whole seconds to wait."""
        wait = self.take(key)
        if wait:
            seconds = max(1, math.ceil(wait))
            raise TooManyRequests(f"rate limit of key {key} exceeded; retry in {seconds} s", retry_after=seconds)


class FollowSlots(Slots):
    """The follow streams this cloud serves at once, at most ``cap`` (common/slots.py): a slot
    is taken before a stream starts (ServiceUnavailable when none is free) and given back
    when its answer ends, however it ends."""

    def __init__(self, cap: int = MAX_FOLLOWS) -> None:
        super().__init__(cap)

    def take(self) -> Slot:
        try:
            return super().take()
        except SlotsFull as exc:
            raise ServiceUnavailable(f"this cloud already serves {exc.cap} follow streams, its most; "
                                     "try again later") from None
