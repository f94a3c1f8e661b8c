"""Splits a query into the fragment every edge runs and the final step the
collector runs over the merged partial answers.

The time range is resolved here, once, into absolute UTC bounds that every
edge receives as $start and $end: edges never call now().
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from pxo.collector import query
from pxo.collector.errors import QueryError
from pxo.common import sqlgate
from pxo.common.schema import Table


@dataclass(frozen=True)
class Plan:
    fragments: dict[str, str]  # table -> SQL each edge runs (may use $start, $end)
    final_sql: str  # runs at the collector over tables of the same names (+ a node column)
    start: dt.datetime | None = None  # UTC, inclusive
    end: dt.datetime | None = None  # UTC, exclusive
    edge_row_limit: int = 0  # pushed-down limit (0: none)


def unknown_table(text: str, pos: int | None, name: str, catalog: Mapping[str, Table]) -> QueryError:
    if not catalog:
        return QueryError.at(text, pos, f"unknown table {name!r}: no edge has registered yet, "
                                        "so no table exists")
    close = difflib.get_close_matches(name, list(catalog), n=1)
    hint = (f"did you mean {close[0]}? " if close else "") + "tables: " + ", ".join(sorted(catalog))
    return QueryError.at(text, pos, f"unknown table {name!r}", hint)


def plan_pipe(text: str, catalog: Mapping[str, Table], *, now: dt.datetime) -> Plan:
    p = query.parse(text)
    if p.table not in catalog:
        raise unknown_table(text, p.table_pos, p.table, catalog)
    table = catalog[p.table]
    seconds = p.range_seconds
    start = end = None
    where = ""
    if seconds is not None:
        end = now
        start = now - dt.timedelta(seconds=seconds)
        where = ' WHERE "time" >= $start AND "time" < $end'
    takes = [op.count for op in p.ops if isinstance(op, query.Take)]
    limit = min(takes) if takes else 0
    has_time = "time" in table.column_names
    order = ' ORDER BY "time"' if has_time else ""
    # With a limit, each edge sends at most its newest `limit` rows: the
    # overall newest `limit` rows are among them, so the answer is exact.
    newest_first = ' ORDER BY "time" DESC' if has_time else ""
    edge_sql = f'SELECT * FROM "{p.table}"{where}'
    if limit:
        edge_sql += f"{newest_first} LIMIT {limit}"
        final = f'SELECT * FROM (SELECT * FROM "{p.table}"{newest_first} LIMIT {limit}){order}'
    else:
        final = f'SELECT * FROM "{p.table}"{order}'
    return Plan({p.table: edge_sql}, final, start, end, limit)


def plan_sql(text: str, catalog: Mapping[str, Table]) -> Plan:
    """The SQL form: gate it, ship each table it reads, run it at the collector."""
    try:
        used = sqlgate.check(text, catalog)
    except sqlgate.SqlRefused as exc:
        if exc.message.startswith("unknown table"):
            name = exc.message.split("'")[1] if "'" in exc.message else "?"
            raise unknown_table(text, exc.position, name, catalog) from exc
        raise QueryError.at(text, exc.position, exc.message, exc.hint) from exc
    return Plan({t: f'SELECT * FROM "{t}"' for t in sorted(used)}, text)
