"""The language's types (docs/query-language.md "Types") and the DuckDB types behind them.

Every value has a kind (int, float, bool, string, time, duration) and a DuckDB type. A
column keeps the DuckDB type its table declares (an UBIGINT stays an UBIGINT when it is
only passed along, compared, grouped or min'd); a computed value has its kind's own
DuckDB type (an int is a BIGINT, a float a DOUBLE). The planner knows every column's
type from these rules alone: it never asks DuckDB.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    INT = "int"  # a signed 64-bit integer in arithmetic (docs: "Integers")
    FLOAT = "float"  # an IEEE 754 double
    BOOL = "bool"
    STRING = "string"
    TIME = "time"  # a UTC timestamp, microseconds
    DURATION = "duration"  # an interval of microseconds
    NULL = "null"  # the literal null: it takes the type of what it meets
    OTHER = "other"  # a column of any other DuckDB type: passed along, compared, counted


@dataclass(frozen=True)
class Type:
    kind: Kind
    sql: str  # the DuckDB type of the value

    @property
    def numeric(self) -> bool:
        return self.kind in (Kind.INT, Kind.FLOAT)

    @property
    def wide(self) -> bool:
        """An int whose DuckDB type holds values beyond the signed 64-bit range."""
        return self.kind is Kind.INT and self.sql in _WIDE_INTS

    @property
    def unsigned(self) -> bool:
        return self.kind is Kind.INT and self.sql.startswith("U")

    def __str__(self) -> str:
        return self.sql


INT = Type(Kind.INT, "BIGINT")
FLOAT = Type(Kind.FLOAT, "DOUBLE")
BOOL = Type(Kind.BOOL, "BOOLEAN")
STRING = Type(Kind.STRING, "VARCHAR")
TIME = Type(Kind.TIME, "TIMESTAMP")
DURATION = Type(Kind.DURATION, "INTERVAL")
# A column holding only the literal null is stored as DuckDB stores one: an INTEGER.
NULL = Type(Kind.NULL, "INTEGER")
HUGEINT = Type(Kind.INT, "HUGEINT")  # an exact sum of ints (128 bits)

_NARROW_INTS = frozenset(["TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"])
_WIDE_INTS = frozenset(["UBIGINT", "HUGEINT", "UHUGEINT"])
_FLOATS = frozenset(["FLOAT", "DOUBLE"])
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")
_OWN = {"BOOLEAN": BOOL, "VARCHAR": STRING, "TIMESTAMP": TIME, "INTERVAL": DURATION}

# The signed 64-bit range of the language's ints.
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1


def of_column(sql: str) -> Type:
    """The type of a column declared with the DuckDB type ``sql``."""
    name = sql.strip().upper()
    if name in _NARROW_INTS or name in _WIDE_INTS:
        return Type(Kind.INT, name)
    if name in _FLOATS or _DECIMAL.match(name) or name == "DECIMAL":
        return Type(Kind.FLOAT, name)
    own = _OWN.get(name)
    return own if own is not None else Type(Kind.OTHER, name)


def own(kind: Kind) -> Type:
    """A computed value's type: its kind's own DuckDB type."""
    return {Kind.INT: INT, Kind.FLOAT: FLOAT, Kind.BOOL: BOOL, Kind.STRING: STRING, Kind.TIME: TIME,
            Kind.DURATION: DURATION, Kind.NULL: NULL}[kind]


def sum_type(arg: Type) -> Type:
    """DuckDB's sum: ints exactly in 128 bits, decimals as DECIMAL(38, s), floats as doubles."""
    if arg.kind is Kind.INT:
        return HUGEINT
    m = _DECIMAL.match(arg.sql)
    if m:
        return Type(Kind.FLOAT, f"DECIMAL(38,{m.group(2)})")
    return FLOAT


def is_decimal(t: Type) -> bool:
    return bool(_DECIMAL.match(t.sql)) or t.sql == "DECIMAL"


def unify(a: Type, b: Type) -> Type | None:
    """The type two values meet in (a comparison, coalesce, in): None when they cannot."""
    if a.kind is Kind.NULL:
        return b
    if b.kind is Kind.NULL or a == b:
        return a
    if a.numeric and b.numeric:
        return INT if a.kind is b.kind is Kind.INT else FLOAT
    if a.kind is b.kind and a.kind is not Kind.OTHER:
        return own(a.kind)
    return None
