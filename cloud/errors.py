"""Errors raised by the cloud, each mapped to one HTTP status and a JSON body
``{"error": {"code": ..., "message": ...}}`` at the boundary (cloud/app.py).

    CloudError              500 internal
    ├── Unauthorized        401 missing, malformed, unknown or revoked API key
    ├── Forbidden           403 the key's role may not do this
    ├── NotFound            404 no such user, key or cluster
    ├── Conflict            409 the name is taken, or the change would break an invariant
    ├── NotAcceptable       406 no answer format the client accepts
    ├── PayloadTooLarge     413 the body or the query text is too long
    ├── TooManyRequests     429 the key's rate limit (with Retry-After)
    ├── RequestTimeout      408 the client sent its body too slowly
    ├── BadQuery            400 the collector refused the query (with line/column/hint)
    └── CollectorUnavailable 502 the collector did not answer (or refused the cluster token)
"""

from __future__ import annotations

from typing import Any


class CloudError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class Unauthorized(CloudError):
    status = 401
    code = "unauthorized"


class Forbidden(CloudError):
    status = 403
    code = "forbidden"


class NotFound(CloudError):
    status = 404
    code = "not_found"


class Conflict(CloudError):
    status = 409
    code = "conflict"


class NotAcceptable(CloudError):
    status = 406
    code = "not_acceptable"


class PayloadTooLarge(CloudError):
    status = 413
    code = "too_large"


class TooManyRequests(CloudError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class RequestTimeout(CloudError):
    status = 408
    code = "request_timeout"


class BadQuery(CloudError):
    status = 400
    code = "bad_query"


class CollectorUnavailable(CloudError):
    status = 502
    code = "collector_unavailable"
