"""A sink that keeps the rows sources emit, for tests that run sources in-process."""

from __future__ import annotations

import time
from typing import Any


class ListSink:
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def append(self, table: str, row: dict[str, Any]) -> None:
        self.rows.append((table, dict(row)))

    def where(self, table: str, **equal: Any) -> list[dict[str, Any]]:
        """The rows of ``table`` whose columns have the given values."""
        return [r for t, r in list(self.rows) if t == table and all(r.get(k) == v for k, v in equal.items())]

    def wait(self, table: str, timeout: float = 10.0, **equal: Any) -> dict[str, Any]:
        """The first matching row; the bound only keeps a broken probe from hanging the test."""
        end = time.monotonic() + timeout
        while not self.where(table, **equal) and time.monotonic() < end:
            time.sleep(0.02)
        rows = self.where(table, **equal)
        assert rows, f"no {table} row with {equal}"
        return rows[0]
