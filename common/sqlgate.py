"""The gate every SQL text passes before it reaches a DuckDB that holds data.

Each edge runs as root on a production node, so SQL is judged on DuckDB's own
parse tree (``json_serialize_sql``: parsing only, nothing bound or run), never
on text patterns:

- exactly one statement, and it is a SELECT (no ATTACH, COPY, PRAGMA, SET,
  INSTALL, LOAD, CREATE, INSERT...: those are not SELECT nodes);
- every table is one of the allowed tables (or a CTE the query defines), in
  the default schema; no table functions (read_csv, read_parquet, glob...);
- every function is on an allow-list of pure functions (no getenv, no file
  readers, no settings or catalog introspection).

The connection that runs the SQL is hardened as well (see edge/store.py):
this gate is the first wall, not the only one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pxo.common import duckpool
from pxo.common.contract import MAX_QUERY_CHARS
from pxo.common.duckpool import HARDENED

# Pure functions and operators a query may use. Anything else is refused.
ALLOWED_FUNCTIONS = frozenset(
    """
    count count_star sum min max avg mean stddev stddev_samp stddev_pop variance var_samp
    var_pop approx_count_distinct quantile quantile_cont quantile_disc median mode first last
    any_value arg_min arg_max argmin argmax min_by max_by bool_and bool_or string_agg
    list histogram approx_quantile reservoir_quantile sumkahan fsum kahan_sum product
    lower upper lcase ucase length strlen substr substring concat concat_ws replace trim ltrim
    rtrim lpad rpad starts_with ends_with prefix suffix contains instr strpos position
    regexp_matches regexp_full_match regexp_extract regexp_replace split_part left right
    reverse repeat format printf format_bytes formatreadablesize formatreadabledecimalsize
    strftime strptime try_strptime date_trunc datetrunc date_part datepart extract epoch epoch_ms
    epoch_us epoch_ns to_timestamp make_timestamp time_bucket date_diff datediff date_sub
    datesub age to_seconds to_minutes to_hours to_days to_milliseconds to_microseconds
    abs round trunc floor ceil ceiling sign sqrt cbrt exp ln log log2 log10 pow power greatest least
    coalesce ifnull nullif if hash md5 isnan isinf isfinite
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value
    + - * / // % ^ ** || ~~ !~~ ~~* !~~* ~~~ !~~~ & | << >> ~ @ !__postfix
    """.split()  # noqa: SIM905 - a word list reads better than 200 quoted strings
)

# Node types a single statement may have at its root.
_QUERY_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "CTE_NODE"}


@dataclass
class SqlRefused(Exception):
    """The SQL is not allowed or does not parse; ``position`` is a 0-based offset or None;
    ``table``, when the refusal is an unknown table, is its name."""

    message: str
    position: int | None = None
    hint: str = ""
    table: str | None = None

    def __str__(self) -> str:
        return self.message


# The parser: each thread parses on its own cursor of one database (the parser only
# serializes parse trees, so the threads share nothing they could conflict on).
PARSER = duckpool.pool("sqlgate")
__all__ = ["HARDENED", "SqlRefused", "check", "parse"]  # HARDENED: the edge's store reads it here


def parse(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``sql``, as a dict (statements...), or SqlRefused."""
    if len(sql) > MAX_QUERY_CHARS:
        raise SqlRefused(f"the SQL is {len(sql)} characters long; the limit is {MAX_QUERY_CHARS}")
    if "\x00" in sql:
        raise SqlRefused("the SQL contains a NUL character")
    rows = PARSER.cursor().execute("SELECT json_serialize_sql($1::VARCHAR)", [sql]).fetchall()
    tree: dict[str, Any] = json.loads(rows[0][0])
    if tree.get("error"):
        msg = tree.get("error_message", "the SQL does not parse")
        pos = tree.get("position")
        if tree.get("error_type") == "not implemented":
            raise SqlRefused("only SELECT queries are allowed")
        raise SqlRefused(f"SQL syntax error: {msg}", int(pos) if pos not in (None, "") else None)
    return tree


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _cte_names(tree: Any) -> set[str]:
    names = set()
    for node in _walk(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                names.add(str(entry.get("key", "")).lower())
    return names


def _location(node: dict[str, Any]) -> int | None:
    loc = node.get("query_location")
    return loc if isinstance(loc, int) and loc < 1 << 32 else None


def check(sql: str, tables: Iterable[str]) -> set[str]:
    """Refuse ``sql`` unless it is one safe SELECT; return the tables it reads.

    The verdict is a pure function of the text and the allowed tables, and the same
    fragments come back with every repeated query (a dashboard refreshing), so
    accepted texts are remembered (parsing a fragment costs about a millisecond)."""
    return set(_check_cached(sql, frozenset(t.lower() for t in tables)))


@functools.lru_cache(maxsize=1024)
def _check_cached(sql: str, allowed: frozenset[str]) -> frozenset[str]:
    return frozenset(_check(sql, allowed))


def _check(sql: str, allowed: frozenset[str]) -> set[str]:
    tree = parse(sql)
    statements = tree.get("statements", [])
    if len(statements) != 1:
        raise SqlRefused(f"exactly one statement is allowed, not {len(statements)}")
    root = statements[0].get("node", {})
    if root.get("type") not in _QUERY_NODES:
        raise SqlRefused("only SELECT queries are allowed")
    ctes = _cte_names(root)
    used: set[str] = set()
    for node in _walk(root):
        ntype = node.get("type")
        if ntype == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name", "")).lower()
            if node.get("catalog_name") or schema not in ("", "main"):
                raise SqlRefused(
                    f"table {'.'.join(node.get('qualified_name', {}).get('path', [name]))} "
                    "is not a pxo table", _location(node))
            if name in ctes:
                continue
            if name not in allowed:
                raise SqlRefused(f"unknown table {name!r}", _location(node),
                                 hint="tables: " + ", ".join(sorted(allowed)), table=str(node.get("table_name", "")))
            used.add(name)
        elif ntype == "TABLE_FUNCTION":
            fn = node.get("function", {}).get("function_name", "?")
            raise SqlRefused(f"table function {fn}() is not allowed", _location(node))
        elif ntype == "RECURSIVE_CTE_NODE":
            raise SqlRefused("recursive queries are not allowed", _location(node))
        if node.get("class") in ("FUNCTION", "WINDOW"):
            fn = str(node.get("function_name", "")).lower()
            if node.get("schema") or node.get("catalog") or fn not in ALLOWED_FUNCTIONS:
                raise SqlRefused(f"function {fn}() is not allowed", _location(node))
    return used
