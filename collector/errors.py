"""Errors raised by the collector.

    CollectorError        anything the collector reports
    └── QueryError        the query cannot run: syntax, unknown table, refused SQL;
                          carries a 1-based line/column and a hint

Errors from grpc and duckdb are translated where they enter.
"""

from __future__ import annotations

from pxo.v1 import pxo_pb2


class CollectorError(Exception):
    """Base of every error the collector reports."""


class QueryError(CollectorError):
    def __init__(self, message: str, *, line: int = 0, column: int = 0, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.hint = hint

    @classmethod
    def at(cls, text: str, offset: int | None, message: str, hint: str = "") -> QueryError:
        """An error at a 0-based character offset of ``text``."""
        if offset is None:
            return cls(message, hint=hint)
        offset = max(0, min(offset, len(text)))
        before = text[:offset]
        line = before.count("\n") + 1
        column = offset - (before.rfind("\n") + 1) + 1
        return cls(message, line=line, column=column, hint=hint)

    def to_proto(self) -> pxo_pb2.QueryError:
        return pxo_pb2.QueryError(message=self.message, line=self.line, column=self.column, hint=self.hint)
