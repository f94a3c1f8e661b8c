"""UTC time as pxo passes it around: naive datetimes in UTC inside DuckDB and
Arrow, microseconds since the Unix epoch on the wire."""

from __future__ import annotations

import datetime as dt

EPOCH = dt.datetime(1970, 1, 1)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def to_unix_us(t: dt.datetime | None) -> int:
    """0 stands for "no time" on the wire."""
    return 0 if t is None else (t - EPOCH) // dt.timedelta(microseconds=1)


def from_unix_us(us: int) -> dt.datetime | None:
    return EPOCH + dt.timedelta(microseconds=us) if us else None


def iso(t: dt.datetime | None) -> str | None:
    """ISO 8601 with a Z, as the REST API shows times."""
    if t is None:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t.isoformat() + "Z"
