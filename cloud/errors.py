"""Errors of the cloud: one tree, each class one HTTP status, and one way to answer them,
``error_response``: a JSON body ``{"error": {"code": ..., "message": ..., ...}}`` with the
headers its class adds. Errors that start elsewhere are mapped onto this tree: gRPC's
where they enter (cloud/collector_client.py); FastAPI's schema check, Starlette's own 404
and 405, the metadata store's conflicts and anything unexpected by the app's one error
handler (cloud/app.py). So every error the cloud answers is one of these, answered the
same way, the body limit's included (cloud/limits.py).

    CloudError               500 internal: anything unexpected (its traceback goes to the log only)
    ├── BadRequest           400 a value the schema allows that the cloud cannot use (TLS files)
    ├── BadQuery             400 the collector refused the query (with line, column, hint)
    ├── Unauthorized         401 missing, malformed, unknown or revoked API key (WWW-Authenticate: Bearer)
    ├── Forbidden            403 the key's role may not do this
    ├── NotFound             404 no such user, key, cluster or path
    ├── MethodNotAllowed     405 the path has no such method (Allow: the ones it has)
    ├── NotAcceptable        406 no answer format the client accepts
    ├── RequestTimeout       408 the client sent its body too slowly
    ├── Conflict             409 the name is taken, or the change would break an invariant
    ├── PayloadTooLarge      413 the body or the query text is too long
    ├── InvalidRequest       422 the request does not match the schema
    ├── TooManyRequests      429 the key's rate limit (Retry-After: seconds)
    ├── CollectorUnavailable 502 the collector did not answer (or refused the cluster token)
    ├── ServiceUnavailable   503 too many follow streams
    └── HttpError            any other status Starlette answers by itself
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse


class CloudError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def headers(self) -> dict[str, str]:
        """The headers this error is answered with (besides the content type)."""
        return {}


class BadRequest(CloudError):
    status = 400
    code = "invalid_request"


class BadQuery(CloudError):
    status = 400
    code = "bad_query"


class Unauthorized(CloudError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(CloudError):
    status = 403
    code = "forbidden"


class NotFound(CloudError):
    status = 404
    code = "not_found"


class MethodNotAllowed(CloudError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: Sequence[str]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class NotAcceptable(CloudError):
    status = 406
    code = "not_acceptable"


class RequestTimeout(CloudError):
    status = 408
    code = "request_timeout"


class Conflict(CloudError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CloudError):
    status = 413
    code = "too_large"


class InvalidRequest(CloudError):
    status = 422
    code = "invalid_request"


class TooManyRequests(CloudError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class CollectorUnavailable(CloudError):
    status = 502
    code = "collector_unavailable"


class ServiceUnavailable(CloudError):
    status = 503
    code = "unavailable"


class HttpError(CloudError):
    """A status Starlette answers by itself that has no class of its own here."""

    code = "http_error"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_response(exc: CloudError, *, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one answer to an error: its status, its JSON body, its class's headers (over ``headers``)."""
    return JSONResponse(exc.body(), status_code=exc.status, headers={**(headers or {}), **exc.headers()})
