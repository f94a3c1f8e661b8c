"""The edge's Arrow, without pyarrow.

The edge speaks Arrow twice: rows go into DuckDB as Arrow record batches (one per
table per commit, also handed to followers), and answers leave as Arrow IPC
streams (one self-contained stream per gRPC message, as common/arrowipc.py reads
them). Both go through nanoarrow and DuckDB's Arrow C stream interface here:
importing pyarrow costs the edge 25 MiB resident (libarrow's pages), nanoarrow
2.5 MiB. The collector, the cloud and the CLI keep pyarrow: they merge and convert.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import duckdb
import nanoarrow as na
from nanoarrow import ipc

from pxo.common.schema import Table

# What one gRPC message may carry: gRPC's default limit on receiving is 4 MiB, so a chunk
# whose IPC stream is bigger is cut into pieces below this (a single row bigger than it cannot be).
MESSAGE_BYTES = 3 << 20

_EPOCH = dt.datetime(1970, 1, 1)
_US = dt.timedelta(microseconds=1)
_INTEGER = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
# The Arrow type each DuckDB column type is built as; DuckDB casts on insert (INTEGER from int64).
_TYPES = {
    "BOOLEAN": na.bool_(), "DOUBLE": na.float64(), "FLOAT": na.float64(), "VARCHAR": na.string(),
    "TIMESTAMP": na.timestamp("us"), "UBIGINT": na.uint64(), "UINTEGER": na.uint64(), "USMALLINT": na.uint64(),
    "UTINYINT": na.uint64(), "BIGINT": na.int64(), "INTEGER": na.int64(), "SMALLINT": na.int64(),
    "TINYINT": na.int64(),
}


class Batch:
    """One record batch of rows: its schema and, unless empty, an Arrow struct array."""

    __slots__ = ("_ipc", "array", "num_rows", "schema")

    def __init__(self, schema: na.Schema, array: na.Array | None = None) -> None:
        self.schema = schema
        self.array = array
        self.num_rows = len(array) if array is not None else 0
        self._ipc: bytes | None = None

    def ipc(self) -> bytes:
        """This batch as one self-contained Arrow IPC stream: the schema, then the rows if any
        (written once, kept: the size check and the message share it)."""
        if self._ipc is None:
            self._ipc = self._encode()
        return self._ipc

    def _encode(self) -> bytes:
        buf = io.BytesIO()
        writer = ipc.StreamWriter.from_writable(buf)
        try:
            writer.write_stream(self.array if self.array is not None else na.c_array_stream([], self.schema))
        finally:
            writer.close()
        return buf.getvalue()

    def to_pylist(self) -> list[dict[str, Any]]:
        """The rows as dicts (tests and small answers; timestamps come back as naive UTC datetimes)."""
        return [] if self.array is None else list(self.array.to_pylist())

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        """So DuckDB can scan it (``register``) as often as needed: a fresh stream each time."""
        if self.array is not None:
            return self.array.__arrow_c_stream__(requested_schema)
        return na.c_array_stream([], self.schema).__arrow_c_stream__(requested_schema)


# -- building a batch from rows ------------------------------------------------------


def _timestamp(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        return (v - _EPOCH) // _US
    return v


def _column(values: list[Any], duck_type: str) -> Any:
    if duck_type == "TIMESTAMP":
        values = [_timestamp(v) for v in values]
    return na.c_array(values, _TYPES.get(duck_type, na.string()))


def _coerced(value: Any, duck_type: str) -> Any:
    """What the slow path tries for a value the fast path refused, as DuckDB would cast it: a whole
    float in an integer column, a number in a text column."""
    if duck_type in _INTEGER and isinstance(value, float) and value.is_integer():
        return int(value)
    if duck_type == "VARCHAR" and isinstance(value, int | float):
        return str(value)
    return value


def _convertible(value: Any, duck_type: str) -> bool:
    try:
        _column([value], duck_type)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def build(table: Table, rows: Sequence[Mapping[str, Any]]) -> tuple[Batch, dict[int, str]]:
    """``rows`` (dicts; a missing key is null) as one batch of ``table``'s columns, and the rows left
    out because a value does not fit its column, by index, with why (the batch holds every other row)."""
    types = {c.name: c.type.upper() for c in table.columns}
    schema = na.struct({c.name: _TYPES.get(types[c.name], na.string()) for c in table.columns})
    problems: dict[int, str] = {}
    try:
        children = [_column([r.get(name) for r in rows], t) for name, t in types.items()]
    except (ValueError, TypeError, OverflowError):  # the slow path: find the rows at fault
        kept: list[dict[str, Any]] = []
        for i, r in enumerate(rows):
            fixed = {name: _coerced(r.get(name), t) for name, t in types.items()}
            bad = [name for name, t in types.items() if not _convertible(fixed[name], t)]
            if bad:
                problems[i] = (f"{table.name}: {', '.join(f'{n}={r.get(n)!r}' for n in bad)} "
                               f"does not fit {', '.join(types[n] for n in bad)}")
            else:
                kept.append(fixed)
        rows = kept
        children = [_column([r[name] for r in rows], t) for name, t in types.items()]
    if not rows:
        return Batch(schema), problems
    array = na.Array(na.c_array_from_buffers(schema, len(rows), [None], children=children))
    return Batch(schema, array), problems


# -- reading an answer -----------------------------------------------------------------


def stream(cur: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None) -> na.ArrayStream:
    """The answer of one SELECT on ``cur`` as an Arrow stream, planned once.

    DuckDB 2.0's Python API gives an Arrow C stream only from a relation (``cursor.sql()``), which
    binds the statement to describe it and binds it again to run it: 2.7 ms more for a top-N
    fragment's SQL (docs/benchmarks.md). What the relation runs underneath, the connection's
    ``_submit(...).arrow_capsule()``, plans once; it is private, so a DuckDB without it (the
    version is locked in requirements/, and tests/edge/test_arrowout.py checks that it has it)
    still answers, through the relation."""
    submit = getattr(cur, "_submit", None)
    if submit is None:
        return na.ArrayStream(cur.sql(sql, params=dict(params) if params else None))
    return na.ArrayStream(submit(sql, dict(params) if params else None, "stream").arrow_capsule())


def empty(cur: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None) -> Batch:
    """The schema of ``SELECT * FROM (sql)`` and no rows."""
    answer = stream(cur, f"SELECT * FROM ({sql}) LIMIT 0", params)
    for _ in answer:  # read to its end: the connection takes its next question only then
        pass
    return Batch(answer.schema)


def read(cur: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None, cap: int,
         connect: Callable[[], duckdb.DuckDBPyConnection]) -> Iterator[Batch]:
    """The rows of ``sql`` on ``cur`` as batches, each small enough for one gRPC message: at least
    one batch (with the schema and maybe no rows), and no more than ``cap`` rows in all. DuckDB
    hands chunks of up to 122,880 rows and nanoarrow writes no slices, so where the cap or the
    message size falls inside a chunk, DuckDB cuts it on a connection from ``connect`` (not
    ``cur``, which is still answering), opened only then."""
    answer = stream(cur, sql, params)
    cutter = _Cutter(connect, answer.schema)
    sent = 0
    try:
        for array in answer:
            n = len(array)
            if not n:
                continue
            if sent + n > cap:
                array, n = cutter.rows(array, cap - sent, 0), cap - sent
            yield from cutter.fitting(Batch(answer.schema, array))
            sent += n
            if sent >= cap:
                return
        if not sent:
            yield Batch(answer.schema)
    finally:
        cutter.close()


class _Cutter:
    def __init__(self, connect: Callable[[], duckdb.DuckDBPyConnection], schema: na.Schema) -> None:
        self._connect = connect
        self._con: duckdb.DuckDBPyConnection | None = None
        self.schema = schema

    def rows(self, array: na.Array, limit: int, offset: int) -> na.Array:
        """Rows [offset, offset + limit) of ``array``: a scan of one Arrow array keeps its order."""
        if self._con is None:
            self._con = self._connect()
        self._con.register("pxo_chunk", Batch(self.schema, array))
        try:
            parts = list(stream(self._con, f"SELECT * FROM pxo_chunk LIMIT {int(limit)} OFFSET {int(offset)}"))
        finally:
            self._con.unregister("pxo_chunk")
        return parts[0] if len(parts) == 1 else na.Array(na.c_array_stream([na.c_array(p) for p in parts], self.schema))

    def fitting(self, batch: Batch) -> Iterator[Batch]:
        """``batch``, or its rows in consecutive pieces when its IPC stream is over MESSAGE_BYTES."""
        if batch.array is None or batch.num_rows < 2 or len(batch.ipc()) <= MESSAGE_BYTES:
            yield batch
            return
        pieces = -(-len(batch.ipc()) // MESSAGE_BYTES) + 1
        step = -(-batch.num_rows // pieces)
        for offset in range(0, batch.num_rows, step):
            yield from self.fitting(Batch(self.schema, self.rows(batch.array, step, offset)))

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
