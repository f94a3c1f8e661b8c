"""UTC time as pxo passes it around: naive datetimes in UTC inside DuckDB and
Arrow, microseconds since the Unix epoch on the wire."""

from __future__ import annotations

import datetime as dt
import time

EPOCH = dt.datetime(1970, 1, 1)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def to_unix_us(t: dt.datetime | None) -> int:
    """0 stands for "no time" on the wire."""
    return 0 if t is None else (t - EPOCH) // dt.timedelta(microseconds=1)


def from_unix_us(us: int) -> dt.datetime | None:
    return EPOCH + dt.timedelta(microseconds=us) if us else None


def from_unix_seconds(seconds: float) -> dt.datetime:
    """A time.time() reading as a naive UTC datetime (microseconds)."""
    return EPOCH + dt.timedelta(microseconds=round(seconds * 1_000_000))


def unix_us(seconds: float) -> int:
    """A time.time() reading as microseconds since the epoch (the wire's unit)."""
    return round(seconds * 1_000_000)


def from_kernel_clock(ns: int, clock: int) -> dt.datetime:
    """A stamp of a kernel clock (time.CLOCK_BOOTTIME for bpf_ktime_get_boot_ns(),
    time.CLOCK_MONOTONIC for the kernel log) in UTC, by the clocks' offset as it is now."""
    now_real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    unix_ns = now_real - (time.clock_gettime_ns(clock) - ns)
    return EPOCH + dt.timedelta(microseconds=unix_ns // 1000)


def iso(t: dt.datetime | None) -> str | None:
    """ISO 8601 with a Z, as the REST API shows times."""
    if t is None:
        return None
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t.isoformat() + "Z"
