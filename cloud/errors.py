"""Errors raised by the cloud, each mapped to one HTTP status and a JSON body
``{"error": {"code": ..., "message": ...}}`` at the boundary (cloud/app.py).

    CloudError              500 internal
    ├── Unauthorized        401 missing, malformed, unknown or revoked API key
    ├── Forbidden           403 the key's role may not do this
    ├── BadQuery            400 the collector refused the query (with line/column/hint)
    └── CollectorUnavailable 502 the collector did not answer
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


class BadQuery(CloudError):
    status = 400
    code = "bad_query"


class CollectorUnavailable(CloudError):
    status = 502
    code = "collector_unavailable"
