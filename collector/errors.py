"""Errors raised by the collector.

    CollectorError        anything the collector reports
    └── QueryError        the query cannot run: syntax, types, refused SQL, an integer
        │                 overflow; carries a 1-based line/column and a hint
        ├── UnknownTable  it names a table no edge has (``table``)
        └── IntegerOverflow  an int result beyond signed 64 bits, in ``expression``

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
        line, column = position(text, offset)
        return cls(message, line=line, column=column, hint=hint)

    def to_proto(self) -> pxo_pb2.QueryError:
        return pxo_pb2.QueryError(message=self.message, line=self.line, column=self.column, hint=self.hint)


class UnknownTable(QueryError):
    """The query reads a table that no edge has; ``table`` is its name as written."""

    def __init__(self, table: str, message: str, *, line: int = 0, column: int = 0, hint: str = "") -> None:
        super().__init__(message, line=line, column=column, hint=hint)
        self.table = table


class IntegerOverflow(QueryError):
    """An integer result beyond signed 64 bits; ``expression`` is the query's text of the
    expression whose result it was."""

    def __init__(self, expression: str, message: str, *, line: int = 0, column: int = 0, hint: str = "") -> None:
        super().__init__(message, line=line, column=column, hint=hint)
        self.expression = expression

    def to_proto(self) -> pxo_pb2.QueryError:
        e = super().to_proto()
        e.expression = self.expression
        return e


def position(text: str, offset: int | None) -> tuple[int, int]:
    """The 1-based (line, column) of a 0-based offset of ``text``; (0, 0) for None."""
    if offset is None:
        return 0, 0
    offset = max(0, min(offset, len(text)))
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1
