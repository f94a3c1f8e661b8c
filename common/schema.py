"""Tables as data: each source declares its tables once, and DDL, the Describe
answer, docs and CLI columns all come from that declaration (Pixie's *_table.h)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pxo.v1 import pxo_pb2


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # a DuckDB type name
    description: str

    def to_proto(self) -> pxo_pb2.Column:
        return pxo_pb2.Column(name=self.name, type=self.type, description=self.description)

    @classmethod
    def from_proto(cls, msg: pxo_pb2.Column) -> Column:
        return cls(msg.name, msg.type, msg.description)


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...] = field(default_factory=tuple)
    # Rare rows someone is waiting for (an OOM kill): the edge commits them within
    # milliseconds instead of at its next periodic flush. Edge-only: not sent in protos.
    urgent: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self, *, temp: bool = False) -> str:
        """CREATE TABLE for this table; ``temp``: a TEMP table (the collector's scratch)."""
        cols = ",\n  ".join(f'"{c.name}" {c.type}' for c in self.columns)
        return f'CREATE {"TEMP " if temp else ""}TABLE IF NOT EXISTS "{self.name}" (\n  {cols}\n)'

    def to_proto(self) -> pxo_pb2.Table:
        return pxo_pb2.Table(
            name=self.name,
            description=self.description,
            columns=[c.to_proto() for c in self.columns],
        )

    @classmethod
    def from_proto(cls, msg: pxo_pb2.Table) -> Table:
        return cls(msg.name, msg.description, tuple(Column.from_proto(c) for c in msg.columns))


# Every table has this column first: when the row happened, in UTC.
TIME = Column("time", "TIMESTAMP", "When it happened (UTC, microseconds)")
