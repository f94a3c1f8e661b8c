"""Splits a query into the fragment every edge runs and the final step the
collector runs over the merged partial answers.

The time range is resolved here, once, into absolute UTC bounds that every
edge receives as $start and $end: edges never call now().

A pipe query compiles to a chain of SQL stages (one CTE per operator). The
chain is split at the first operator that needs every node's rows (summarize,
distinct, sort, take, top):

- the edge runs the row-local prefix (range, where, project, extend) and then
  the split operator's partial form: partial aggregates per group, distinct
  rows, or its own first N rows in the query's total order (top-N pushdown);
- the collector merges the partial answers and runs the rest of the chain.

Exactness: every partial is exact and complete, so the distributed answer is
the answer of the same query over one database holding every row (see
docs/query-language.md "How a query runs" and tests/collector/test_exactness.py):
count, sum, min, max merge directly; avg is sum and count; dcount, stdev and
percentiles ship each group's distinct values with their counts and finish at
the collector. Every ORDER BY ends with every column of the relation, so "the
first N rows" is a total order and does not depend on how rows are spread.

No user text is pasted into SQL: names are checked against the catalog (or the
relation built so far) and double-quoted, literals go through ``sql_literal``,
and the node's own name reaches its fragment the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import duckdb

from pxo.collector import query
from pxo.collector.errors import QueryError
from pxo.collector.query import (
    Between,
    Binary,
    Call,
    Col,
    Distinct,
    Expr,
    Extend,
    InList,
    Last,
    Lit,
    Project,
    ProjectAway,
    Since,
    Sort,
    SortKey,
    Summarize,
    Take,
    Top,
    Unary,
    Where,
)
from pxo.collector.scratch import scratch
from pxo.common import sqlgate
from pxo.common.schema import Table

NODE = "node"
_INTERNAL = "__pxo_"
# Where a stage's SQL reads the stage before it. A NUL can never be in a rendered
# literal (sql_literal refuses it), so replacing it cannot touch a user's value.
PREV = "\x00prev\x00"


@dataclass(frozen=True)
class Fragment:
    """What every edge runs for one merge table of the final step."""

    table: str  # the edge table it reads: an edge without it is skipped
    parts: tuple[str, ...]  # SQL, joined by the node's name as a SQL literal (see sql())
    columns: tuple[tuple[str, str], ...]  # the merge table at the collector: (name, DuckDB type)
    add_node: bool = False  # the collector adds the node column (the SQL form)

    def sql(self, node: str) -> str:
        """This node's SQL: its name enters only as a rendered literal."""
        return sql_literal(node).join(self.parts)


@dataclass(frozen=True)
class Plan:
    fragments: dict[str, Fragment]  # merge table name -> what each edge runs to fill it
    final_sql: str  # runs at the collector over the merge tables
    start: dt.datetime | None = None  # UTC, inclusive
    end: dt.datetime | None = None  # UTC, exclusive
    edge_row_limit: int = 0  # pushed-down limit (0: none)
    # The partial answers must be complete for the answer to be right (aggregates,
    # and rows the collector still has to aggregate or cut): a node holding more
    # than the row cap fails the query instead of truncating it.
    complete: bool = False
    only_nodes: frozenset[str] | None = None  # where node == ...: only these can contribute
    excluded_nodes: frozenset[str] = frozenset()  # where node != ...
    reference_sql: str = ""  # the same query over one table holding every row (node column included)
    columns: tuple[str, ...] = field(default=())  # the answer's columns, in order
    approximate: tuple[str, ...] = ()  # answer columns computed from sketches (within SKETCH_RELATIVE_ERROR)

    def skip_reason(self, node: str) -> str:
        """Why this node cannot contribute ('' when it can)."""
        if (self.only_nodes is not None and node not in self.only_nodes) or node in self.excluded_nodes:
            return "the query's where clause excludes this node"
        return ""


# -- rendering -----------------------------------------------------------------


def ident(name: str) -> str:
    """A checked name, double-quoted."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"not a plain name: {name!r}")
    return f'"{name}"'


def sql_literal(value: object) -> str:
    """A value as a SQL literal: the only way a user's value reaches SQL text."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else "NULL"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL in a string literal")
        if "$" in value:  # never let the text "$start" or "$end" appear: the edge binds those
            return "(" + " || '$' || ".join(sql_literal(p) for p in value.split("$")) + ")"
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def unknown_table(text: str, pos: int | None, name: str, catalog: Mapping[str, Table]) -> QueryError:
    if not catalog:
        return QueryError.at(text, pos, f"unknown table {name!r}: no edge has registered yet, "
                                        "so no table exists")
    close = difflib.get_close_matches(name, list(catalog), n=1)
    hint = (f"did you mean {close[0]}? " if close else "") + "tables: " + ", ".join(sorted(catalog))
    return QueryError.at(text, pos, f"unknown table {name!r}", hint)


# -- expressions -----------------------------------------------------------------

AGGREGATES = {"count": (0, 1), "countif": (1, 1), "sum": (1, 1), "min": (1, 1), "max": (1, 1), "avg": (1, 1),
              "dcount": (1, 1), "stdev": (1, 1), "percentile": (2, 2), "p50": (1, 1), "p90": (1, 1),
              "p95": (1, 1), "p99": (1, 1), "percentile_exact": (2, 2)}
# Percentiles from a mergeable sketch (approximate, within SKETCH_RELATIVE_ERROR).
SKETCH = {"percentile", "p50", "p90", "p95", "p99"}
QUANTILES = SKETCH | {"percentile_exact"}
# Aggregates whose partials are the group's distinct values (or sketch buckets) with counts.
HOLISTIC = {"dcount", "percentile_exact"} | SKETCH
SKETCH_RELATIVE_ERROR = 0.01
# The sketch's buckets (DDSketch's log mapping): x > 0 falls in bucket i = ceil(ln x / ln g),
# (g^(i-1), g^i], whose representative 2 g^i / (g + 1) is within (g - 1)/(g + 1) = the
# relative error of every value in it. Bucket keys are BIGINTs ordered like the values:
# i + OFFSET for x > 0, its negation for x < 0, 0 for zero, and codes for infinities and NaN.
_GAMMA = (1 + SKETCH_RELATIVE_ERROR) / (1 - SKETCH_RELATIVE_ERROR)
_BUCKET_OFFSET = 100_000  # ln of a double / ln g lies within +-40,000
_BUCKET_INF, _BUCKET_NAN = 999_999, 1_000_000
NUMERIC_TYPES = re.compile(r"^(U?(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT)|FLOAT|DOUBLE|DECIMAL(\(.*\))?)$")
# name -> (arity range, SQL function); isnull, isnotnull, bin and tostring are special
SCALARS: dict[str, tuple[tuple[int, int], str]] = {
    "isnull": ((1, 1), ""), "isnotnull": ((1, 1), ""), "bin": ((2, 2), ""), "tostring": ((1, 1), ""),
    "lower": ((1, 1), "lower"), "upper": ((1, 1), "upper"), "strlen": ((1, 1), "length"),
    "abs": ((1, 1), "abs"), "floor": ((1, 1), "floor"), "ceil": ((1, 1), "ceil"), "round": ((1, 2), "round"),
    "sqrt": ((1, 1), "sqrt"), "coalesce": ((1, 16), "coalesce"), "strcat": ((1, 16), "concat"),
    "format_bytes": ((1, 1), "format_bytes"),
}
_CMP = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _quantile(call: Call) -> float:
    """The quantile (0..1) of a percentile call, checked."""
    if call.name not in ("percentile", "percentile_exact"):
        return int(call.name[1:]) / 100
    q = call.args[1]
    if not isinstance(q, Lit) or q.kind not in ("int", "float") or not 0 <= float(q.value) <= 100:  # type: ignore[arg-type]
        raise _Err(f"{call.name}(x, q) takes q as a number from 0 to 100", q.pos)
    return float(q.value) / 100  # type: ignore[arg-type]


class _Err(Exception):
    """A compile error at an offset; turned into QueryError with the query text."""

    def __init__(self, message: str, pos: int | None, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.pos, self.hint = message, pos, hint


def _columns_hint(name: str, cols: list[str]) -> str:
    close = difflib.get_close_matches(name, cols, n=1) or difflib.get_close_matches(
        name.lower(), [c.lower() for c in cols], n=1)
    listed = ", ".join(cols) if len(cols) <= 40 else ", ".join(cols[:40]) + ", ..."
    return (f"did you mean {close[0]}? " if close else "") + "columns: " + listed


def resolve(name: str, pos: int, cols: list[str]) -> str:
    for c in cols:
        if c == name:
            return c
    for c in cols:
        if c.lower() == name.lower():
            return c
    raise _Err(f"unknown column {name!r}", pos, _columns_hint(name, cols))


AggRender = Callable[[Call], str]


def compile_expr(e: Expr, cols: list[str], agg: AggRender | None = None, *, in_agg: bool = False) -> str:
    """``e`` as SQL over a relation with columns ``cols``. ``agg`` renders aggregate
    calls (None: aggregates are not allowed here)."""
    if isinstance(e, Lit):
        if e.kind == "duration":
            return f"to_microseconds({int(e.value)})"  # type: ignore[call-overload]
        return sql_literal(e.value)
    if isinstance(e, Col):
        return ident(resolve(e.name, e.pos, cols))
    if isinstance(e, Unary):
        inner = compile_expr(e.operand, cols, agg, in_agg=in_agg)
        return f"(NOT {inner})" if e.op == "not" else f"(- {inner})"
    if isinstance(e, InList):
        left = compile_expr(e.operand, cols, agg, in_agg=in_agg)
        items = ", ".join(compile_expr(i, cols, agg, in_agg=in_agg) for i in e.items)
        return f"({'NOT ' if e.negate else ''}({left} IN ({items})))"
    if isinstance(e, Binary):
        if e.op in ("==", "!=") and isinstance(e.right, Lit) and e.right.kind == "null":
            return f"({compile_expr(e.left, cols, agg, in_agg=in_agg)} IS {'' if e.op == '==' else 'NOT '}NULL)"
        if e.op in ("==", "!=") and isinstance(e.left, Lit) and e.left.kind == "null":
            return f"({compile_expr(e.right, cols, agg, in_agg=in_agg)} IS {'' if e.op == '==' else 'NOT '}NULL)"
        left = compile_expr(e.left, cols, agg, in_agg=in_agg)
        if e.op == "=~":
            assert isinstance(e.right, Lit)
            _check_regex(str(e.right.value), e.right.pos)
            return f"regexp_matches({left}, {sql_literal(e.right.value)})"
        right = compile_expr(e.right, cols, agg, in_agg=in_agg)
        if e.op in ("contains", "!contains"):
            test = f"contains(lower({left}), lower({right}))"
            return f"(NOT {test})" if e.op == "!contains" else test
        if e.op in ("and", "or"):
            return f"({left} {e.op.upper()} {right})"
        return f"({left} {_CMP.get(e.op, e.op)} {right})"
    assert isinstance(e, Call)
    if e.name in AGGREGATES:
        if agg is None:
            raise _Err(f"{e.name}() is an aggregation: use it in summarize", e.pos)
        if in_agg:
            raise _Err(f"{e.name}() inside another aggregation", e.pos)
        lo, hi = AGGREGATES[e.name]
        if not lo <= len(e.args) <= hi:
            raise _Err(f"{e.name}() takes {_arity(lo, hi)}", e.pos)
        if e.name in QUANTILES:
            _quantile(e)
        return agg(e)
    if e.name not in SCALARS:
        raise _Err(f"unknown function {e.name}()", e.pos,
                   _hint_list(e.name, sorted(set(SCALARS) | set(AGGREGATES)), "functions"))
    (lo, hi), fn = SCALARS[e.name]
    if not lo <= len(e.args) <= hi:
        raise _Err(f"{e.name}() takes {_arity(lo, hi)}", e.pos)
    args = [compile_expr(a, cols, agg, in_agg=in_agg) for a in e.args]
    if e.name == "isnull":
        return f"({args[0]} IS NULL)"
    if e.name == "isnotnull":
        return f"({args[0]} IS NOT NULL)"
    if e.name == "tostring":
        return f"CAST({args[0]} AS VARCHAR)"
    if e.name == "bin":
        width = e.args[1]
        if isinstance(width, Lit) and width.kind == "duration":
            if int(width.value) <= 0:  # type: ignore[call-overload]
                raise _Err("the bin width must be positive", width.pos)
            # Buckets start at the Unix epoch, so every node cuts time the same way.
            return f"time_bucket({args[1]}, {args[0]}, TIMESTAMP '1970-01-01 00:00:00')"
        if isinstance(width, Lit) and width.kind in ("int", "float") and float(width.value) > 0:  # type: ignore[arg-type]
            return f"(floor({args[0]} / {args[1]}) * {args[1]})"
        raise _Err("bin(x, width) takes a positive number or a duration (e.g. 5m) as its width", width.pos)
    return f"{fn}({', '.join(args)})"


def _check_regex(pattern: str, pos: int) -> None:
    """Refuse a pattern DuckDB (RE2) cannot compile, now rather than on every edge."""
    with scratch() as con:
        try:
            con.execute("SELECT regexp_matches('', $1::VARCHAR)", [pattern]).fetchall()
        except duckdb.Error as exc:
            raise _Err(f"bad regular expression: {_first_line(exc)}", pos) from None


def _arity(lo: int, hi: int) -> str:
    if lo == hi:
        return f"{lo} argument{'s' if lo != 1 else ''}"
    return f"{lo} to {hi} arguments"


def _hint_list(name: str, choices: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return (f"did you mean {close[0]}? " if close else "") + f"{what}: " + ", ".join(choices)


def _children(e: Expr) -> tuple[Expr, ...]:
    """The expressions directly inside ``e``, left to right."""
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, InList):
        return (e.operand, *e.items)
    return ()


def _agg_calls(e: Expr) -> list[Call]:
    if isinstance(e, Call) and e.name in AGGREGATES:
        return [e]
    return [c for x in _children(e) for c in _agg_calls(x)]


def _refs_outside_aggs(e: Expr) -> list[Col]:
    if isinstance(e, Col):
        return [e]
    if isinstance(e, Call) and e.name in AGGREGATES:
        return []
    return [c for x in _children(e) for c in _refs_outside_aggs(x)]


def _refs(e: Expr) -> list[str]:
    """Every column ``e`` reads, inside aggregations or not (lower case)."""
    if isinstance(e, Col):
        return [e.name.lower()]
    return [c for x in _children(e) for c in _refs(x)]


def _approximate_after(ops: list[query.Op], approx: set[str]) -> set[str]:
    """The columns (lower case) that carry a sketch's error after ``ops``, given those
    that do before them: a column computed from an approximate one is approximate."""
    for op in ops:
        if isinstance(op, Project | Extend | Summarize):
            named: list[tuple[str, Expr]] = []
            if isinstance(op, Summarize):  # the names _summarize_spec gives
                named += [(it.name or _default_name(it.expr) or f"key{i + 1}", it.expr) for i, it in enumerate(op.keys)]
                named += [(it.name or _default_name(it.expr) or f"agg{i + 1}", it.expr) for i, it in enumerate(op.aggs)]
            else:
                named += [(it.name or _default_name(it.expr) or "", it.expr) for it in op.items]
            derived = {name.lower() for name, e in named if any(r in approx for r in _refs(e))}
            if isinstance(op, Extend):
                approx = (approx - {(it.name or "").lower() for it in op.items}) | derived
            else:
                approx = derived
        elif isinstance(op, ProjectAway):
            approx = approx - {c.name.lower() for c in op.names}
    return approx


def _default_name(e: Expr) -> str | None:
    if isinstance(e, Col):
        return e.name
    if isinstance(e, Call):
        first = e.args[0] if e.args else None
        if e.name == "bin" and isinstance(first, Col):
            return first.name
        if e.name in AGGREGATES:
            if first is None:
                return f"{e.name}_"
            if isinstance(first, Col):
                if e.name in ("percentile", "percentile_exact") and isinstance(e.args[1], Lit):
                    return f"{e.name}_{first.name}_{str(e.args[1].value).replace('.', '_')}"
                return f"{e.name}_{first.name}"
    return None


# -- the chain of stages ---------------------------------------------------------


@dataclass
class _Rel:
    """The relation after some stages: its columns (internal ones last) and whether
    it carries the row order of a sort in its __pxo_o column."""

    cols: list[str]
    ordered: bool = False

    @property
    def user(self) -> list[str]:
        return [c for c in self.cols if not c.startswith(_INTERNAL)]


ORD = _INTERNAL + "o"


def _all_cols_order(rel: _Rel) -> list[str]:
    return [f"{ident(c)} ASC NULLS LAST" for c in rel.user]


def _default_order(rel: _Rel) -> list[str]:
    """The order of an unsorted relation: by time when it has one, then every column."""
    if rel.ordered:
        return [ident(ORD)]
    lead = [f'{ident("time")} ASC NULLS LAST'] if "time" in rel.user else []
    return lead + _all_cols_order(rel)


def _take_order(rel: _Rel) -> list[str]:
    """take on an unsorted relation keeps the newest rows (then, every column decides)."""
    if rel.ordered:
        return [ident(ORD)]
    lead = [f'{ident("time")} DESC NULLS LAST'] if "time" in rel.user else []
    return lead + _all_cols_order(rel)


def _sort_order(keys: tuple[SortKey, ...], rel: _Rel) -> list[str]:
    return [f"{compile_expr(k.expr, rel.user)} {'DESC' if k.desc else 'ASC'} NULLS LAST" for k in keys] \
        + _all_cols_order(rel)


TOP_N_THRESHOLD = _INTERNAL + "thr"  # the CTE holding an edge's N-th sort key


def _top_n_edge(prev: str, keys: list[tuple[str, bool]], n: int, rel: _Rel,
                ctes: list[tuple[str, str]]) -> tuple[str, int]:
    """One edge's share of a top-N: a superset of its first N rows in the total order
    (the sort keys, then every column), and how many rows it can be.

    Sorting every row on every column costs a full sort, so with one sort key k the
    edge first finds T, the last non-null key among its first N keys by k alone (a
    top-N that DuckDB answers from a one-column scan; a CTE added to ``ctes``). Its
    first N rows in the total order are then its first N among the rows whose k is
    T or before it (a plain comparison with a scalar, which DuckDB pushes into the
    scan), or, when it has fewer than N non-null keys, those rows and its first N
    rows with a null k (nulls sort last). Only these few rows are sorted on every
    column; at most 2N go out. (An OR of the two filters defeats the pushdown and
    is many times slower.) With several sort keys the edge sorts fully."""
    total = [f"{k} {'DESC' if desc else 'ASC'} NULLS LAST" for k, desc in keys] + _all_cols_order(rel)
    if len(keys) != 1 or n == 0:
        return f"SELECT * FROM {prev} ORDER BY {', '.join(total)} LIMIT {n}", n
    (k, desc), = keys
    ctes.append((TOP_N_THRESHOLD, f"SELECT {'min' if desc else 'max'}(t) AS t FROM (SELECT {k} AS t FROM {prev} "
                                  f"ORDER BY {total[0]} LIMIT {n})"))
    t = f"(SELECT t FROM {ident(TOP_N_THRESHOLD)})"
    cols = ", ".join(ident(c) for c in rel.user)
    order = ", ".join(total)
    sql = (f"SELECT * FROM (SELECT {cols} FROM {prev} WHERE {k} {'>=' if desc else '<='} {t} "
           f"ORDER BY {order} LIMIT {n}) "
           f"UNION ALL SELECT * FROM (SELECT {cols} FROM {prev} WHERE {k} IS NULL ORDER BY {order} LIMIT {n})")
    return sql, 2 * n


def _new_name(name: str, pos: int) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.lower().startswith("__"):
        raise _Err(f"{name!r} cannot be a column name (names start with a letter and are not "
                   "reserved)", pos)
    return name


def _check_unique(names: list[tuple[str, int]]) -> None:
    seen: set[str] = set()
    for name, pos in names:
        if name.lower() in seen:
            raise _Err(f"the column name {name!r} is used twice; name it: other = ...", pos)
        seen.add(name.lower())


def _select_list(items: list[tuple[str, str]]) -> str:
    return ", ".join(f"{sql} AS {ident(name)}" for name, sql in items)


def _local_stage(op: query.Op, rel: _Rel) -> tuple[str, _Rel]:
    """SQL (a SELECT over the previous stage, PREV) of a row-local operator."""
    keep = [ORD] if rel.ordered else []
    if isinstance(op, Where):
        return f"SELECT * FROM {PREV} WHERE {compile_expr(op.predicate, rel.user)}", rel
    if isinstance(op, Project):
        items = []
        for it in op.items:
            if it.name is None and not isinstance(it.expr, Col):
                raise _Err("name this column: project name = expression", it.pos)
            name = resolve(it.expr.name, it.pos, rel.user) if it.name is None else _new_name(it.name, it.pos)  # type: ignore[union-attr]
            items.append((name, compile_expr(it.expr, rel.user), it.pos))
        _check_unique([(n, p) for n, _, p in items])
        return (f"SELECT {_select_list([(n, s) for n, s, _ in items] + [(k, ident(k)) for k in keep])} FROM {PREV}",
                _Rel([n for n, _, _ in items] + keep, rel.ordered))
    if isinstance(op, ProjectAway):
        drop = {resolve(c.name, c.pos, rel.user) for c in op.names}
        cols = [c for c in rel.cols if c not in drop]
        if not [c for c in cols if not c.startswith(_INTERNAL)]:
            raise _Err("project-away would leave no column", op.pos)
        return f"SELECT {', '.join(ident(c) for c in cols)} FROM {PREV}", _Rel(cols, rel.ordered)
    assert isinstance(op, Extend)
    cols = list(rel.user)
    exprs = {c: ident(c) for c in cols}
    _check_unique([(it.name or "", it.pos) for it in op.items])
    for it in op.items:
        assert it.name is not None
        name = _new_name(it.name, it.pos)
        sql = compile_expr(it.expr, rel.user)  # refers to the columns before this extend
        existing = next((c for c in cols if c.lower() == name.lower()), None)
        if existing is not None:
            exprs[existing] = sql
        else:
            cols.append(name)
            exprs[name] = sql
    selected = [(c, exprs[c]) for c in cols] + [(k, ident(k)) for k in keep]
    return f"SELECT {_select_list(selected)} FROM {PREV}", _Rel(cols + keep, rel.ordered)


@dataclass
class _Agg:
    """One aggregate call of a summarize."""

    call: Call
    arg: str  # SQL of its first argument over the input ('' for count())
    index: int
    arg_type: str = ""  # the argument's DuckDB type, once probed (sketch percentiles only)

    @property
    def holistic(self) -> str:
        """What its partials group by: the argument's value, or its sketch bucket."""
        if self.call.name in SKETCH:
            return _bucket(self.arg, self.arg_type)
        return self.arg if self.call.name in HOLISTIC else ""


@dataclass
class _SummarizeSpec:
    keys: list[tuple[str, str]]  # (output name, SQL over the input)
    aggs: list[_Agg]
    outputs: list[tuple[str, Expr]]  # (output name, expression over aggregate calls)

    @property
    def holistic(self) -> list[str]:
        """The distinct SQL of what dcount/percentile partials group by (_Agg.holistic)."""
        out: list[str] = []
        for a in self.aggs:
            if a.holistic and a.holistic not in out:
                out.append(a.holistic)
        return out


def _summarize_spec(op: Summarize, rel: _Rel) -> _SummarizeSpec:
    keys = []
    for i, it in enumerate(op.keys):
        if _agg_calls(it.expr):
            raise _Err("a 'by' key cannot be an aggregation", it.pos)
        name = it.name or _default_name(it.expr) or f"key{i + 1}"
        name = _new_name(resolve(name, it.pos, rel.user) if it.name is None and isinstance(it.expr, Col)
                         else name, it.pos)
        keys.append((name, compile_expr(it.expr, rel.user), it.pos))
    aggs: list[_Agg] = []
    outputs: list[tuple[str, Expr, int | None]] = []  # (name, expression, position)
    for it in op.aggs:
        calls = _agg_calls(it.expr)
        if not calls:
            raise _Err("expected an aggregation such as count(), sum(x), avg(x)", it.pos)
        for col in _refs_outside_aggs(it.expr):
            raise _Err(f"column {col.name!r} must be inside an aggregation, e.g. max({col.name}), "
                       "or among the 'by' keys", col.pos)
        for c in calls:
            compile_expr(c, rel.user, lambda _c: "")  # checks arity and the quantile
            arg = compile_expr(c.args[0], rel.user, lambda _c: "", in_agg=True) if c.args else ""
            aggs.append(_Agg(c, arg, len(aggs)))
        name = it.name or _default_name(it.expr) or f"agg{len(outputs) + 1}"
        outputs.append((_new_name(name, it.pos), it.expr, it.pos))
    _check_unique([(n, p) for n, _, p in keys] + [(n, p) for n, _, p in outputs])
    return _SummarizeSpec([(n, s) for n, s, _ in keys], aggs, [(n, e) for n, e, _ in outputs])


def _naive_agg(a: _Agg) -> str:
    """An aggregate call as one DuckDB aggregate (the single-database form)."""
    n, x = a.call.name, a.arg
    if n == "count":
        return f"count({x or '*'})"
    if n == "countif":
        return f"count(CASE WHEN {x} THEN 1 END)"
    if n in ("sum", "min", "max", "avg"):
        return f"{n}({x})"
    if n == "dcount":
        return f"count(DISTINCT {x})"
    if n == "stdev":
        return f"stddev_samp({x})"
    return f"quantile_disc({x}, {sql_literal(_quantile(a.call))})"


def _bucket(x: str, typ: str = "") -> str:
    """The sketch bucket key of the value ``x`` of DuckDB type ``typ`` (SQL; NULL stays
    NULL). Integers and decimals are never NaN nor infinite, and unsigned ones never
    negative: their form skips those tests (a sixth of an edge's p99 by container)."""
    d = f"CAST({x} AS DOUBLE)"
    lg = sql_literal(math.log(_GAMMA))
    if typ.startswith("U") and NUMERIC_TYPES.match(typ):
        return f"(CASE WHEN {x} = 0 THEN 0 ELSE CAST(ceil(ln({d}) / {lg}) + {_BUCKET_OFFSET} AS BIGINT) END)"
    finite = f"CAST(sign({d}) * (ceil(ln(abs({d})) / {lg}) + {_BUCKET_OFFSET}) AS BIGINT)"
    if NUMERIC_TYPES.match(typ) and typ not in ("FLOAT", "DOUBLE"):
        return f"(CASE WHEN {x} = 0 THEN 0 ELSE {finite} END)"
    return (f"(CASE WHEN isnan({d}) THEN {_BUCKET_NAN} WHEN {d} = 0 THEN 0 "
            f"WHEN isinf({d}) THEN sign({d}) * {_BUCKET_INF} ELSE {finite} END)")


def _bucket_value(k: str) -> str:
    """The representative value of the bucket key ``k`` (SQL, DOUBLE)."""
    lg = sql_literal(math.log(_GAMMA))
    scale = sql_literal(math.log(2 / (_GAMMA + 1)))
    top = sql_literal(sys.float_info.max)  # the top bucket's representative may exceed the largest double
    return (f"(CASE WHEN {k} = {_BUCKET_NAN} THEN CAST('nan' AS DOUBLE) WHEN {k} = 0 THEN CAST(0 AS DOUBLE) "
            f"WHEN abs({k}) = {_BUCKET_INF} THEN sign({k}) * CAST('inf' AS DOUBLE) "
            f"ELSE sign({k}) * least(exp((abs({k}) - {_BUCKET_OFFSET}) * {lg} + {scale}), {top}) END)")


def _outputs_sql(spec: _SummarizeSpec, cols: list[str], render: Callable[[_Agg], str]) -> list[tuple[str, str]]:
    by_call = {id(a.call): a for a in spec.aggs}
    return [(name, compile_expr(e, cols, lambda c: render(by_call[id(c)]))) for name, e in spec.outputs]


def _summarize_single(spec: _SummarizeSpec, rel: _Rel) -> tuple[str, _Rel]:
    items = spec.keys + _outputs_sql(spec, rel.user, _naive_agg)
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(len(spec.keys)))}" if spec.keys else ""
    return f"SELECT {_select_list(items)} FROM {PREV}{group}", _Rel([n for n, _ in items])


def _k(i: int) -> str:
    return ident(f"{_INTERNAL}k{i}")


def _h(i: int) -> str:
    return ident(f"{_INTERNAL}h{i}")


def _p(i: int, part: str = "") -> str:
    return ident(f"{_INTERNAL}a{i}{part}")


W = ident(_INTERNAL + "w")


def _summarize_edge(spec: _SummarizeSpec) -> str:
    """The partial aggregate each edge computes (over PREV): per group, or per group and
    distinct value of the holistic arguments (with the row count as weight)."""
    items = [(f"{_INTERNAL}k{i}", sql) for i, (_, sql) in enumerate(spec.keys)]
    items += [(f"{_INTERNAL}h{i}", sql) for i, sql in enumerate(spec.holistic)]
    if spec.holistic:
        items.append((_INTERNAL + "w", "count(*)"))
    for a in spec.aggs:
        n, x, base = a.call.name, a.arg, f"{_INTERNAL}a{a.index}"
        if n in ("count", "countif", "sum", "min", "max"):
            items.append((base, _naive_agg(a)))
        elif n == "avg":
            items += [(base + "s", f"sum({x})"), (base + "c", f"count({x})")]
        elif n == "stdev":  # count, mean and sum of squared deviations: merged by Chan's formula
            d = f"CAST({x} AS DOUBLE)"
            items += [(base + "n", f"count({d})"), (base + "m", f"avg({d})"),
                      (base + "q", f"var_pop({d}) * count({d})")]
    groups = len(spec.keys) + len(spec.holistic)
    group = f" GROUP BY {', '.join(str(i + 1) for i in range(groups))}" if groups else ""
    return f"SELECT {_select_list(items)} FROM {PREV}{group}"


def _summarize_final(spec: _SummarizeSpec, merged: str) -> tuple[list[tuple[str, str]], str, _Rel]:
    """CTEs finishing the partials in ``merged``, and the SELECT of the summarize's result."""
    nk = len(spec.keys)
    keys = [_k(i) for i in range(nk)]
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    part = f"PARTITION BY {', '.join(keys)} " if keys else ""
    keysel = "".join(f"{k}, " for k in keys)
    m_items = [(f"{_INTERNAL}k{i}", _k(i)) for i in range(nk)]
    ctes: list[tuple[str, str]] = []
    joins: list[str] = []
    finished: dict[int, str] = {}  # aggregate index -> its finished value in the last SELECT
    for a in spec.aggs:
        n, p, out = a.call.name, _p(a.index), f"{_INTERNAL}a{a.index}"
        if n in ("count", "countif"):
            m_items.append((out, f"CAST(coalesce(sum({p}), 0) AS BIGINT)"))
        elif n == "sum":
            m_items.append((out, f"sum({p})"))
        elif n in ("min", "max"):
            m_items.append((out, f"{n}({p})"))
        elif n == "avg":
            m_items.append((out, f"(sum({_p(a.index, 's')}) / nullif(sum({_p(a.index, 'c')}), 0))"))
        elif n == "dcount":
            m_items.append((out, f"count(DISTINCT {_h(spec.holistic.index(a.holistic))})"))
        if (n not in HOLISTIC and n != "stdev") or n == "dcount":
            finished[a.index] = f"m.{ident(out)}"
            continue
        name = f"{_INTERNAL}x{a.index}"
        if n == "stdev":  # Chan et al.: n = sum n_i, mean = sum n_i m_i / n, M2 = sum M2_i + n_i (m_i - mean)^2
            ni, mi, qi = _p(a.index, "n"), _p(a.index, "m"), _p(a.index, "q")
            ctes.append((name + "h", f"SELECT {keysel}{ni} AS ni, {mi} AS mi, {qi} AS qi, "
                                     f"sum({ni}) OVER ({part}) AS n, "
                                     f"sum({ni} * {mi}) OVER ({part}) / sum({ni}) OVER ({part}) AS mean "
                                     f"FROM {merged} WHERE {ni} > 0"))
            ctes.append((name, f"SELECT {keysel}CASE WHEN max(n) > 1 THEN sqrt(greatest(sum(qi) + "
                               f"sum(ni * (mi - mean) * (mi - mean)), 0) / (max(n) - 1)) END AS v "
                               f"FROM {ident(name + 'h')}{group}"))
            value = f"{ident(name)}.v"
        else:  # percentiles: each group's distinct values (or sketch buckets) and their counts
            h = _h(spec.holistic.index(a.holistic))
            hist = (f"SELECT {keysel}{h} AS v, sum({W}) AS w FROM {merged} WHERE {h} IS NOT NULL "
                    f"GROUP BY {', '.join([*keys, h])}")
            # the value (bucket) at DuckDB's quantile_disc index, max(1, n - floor(n - q * n)) - 1
            q = sql_literal(_quantile(a.call))
            ctes.append((name + "h", f"SELECT {keysel}v, sum(w) OVER ({part}ORDER BY v ROWS BETWEEN UNBOUNDED "
                                     f"PRECEDING AND CURRENT ROW) AS cum, sum(w) OVER ({part}) AS n "
                                     f"FROM ({hist})"))
            ctes.append((name, f"SELECT {keysel}min(v) AS v FROM {ident(name + 'h')} WHERE cum > "
                               f"greatest(1, CAST(n AS DOUBLE) - floor(CAST(n AS DOUBLE) - CAST({q} AS DOUBLE) "
                               f"* CAST(n AS DOUBLE))) - 1{group}"))
            value = _bucket_value(f"{ident(name)}.v") if n in SKETCH else f"{ident(name)}.v"
        on = " AND ".join(f"m.{k} IS NOT DISTINCT FROM {ident(name)}.{k}" for k in keys) or "TRUE"
        joins.append(f" LEFT JOIN {ident(name)} ON {on}")
        finished[a.index] = value
    if not m_items:  # only stdev and percentiles, no keys: one row to join them to
        m_items.append((_INTERNAL + "n", "count(*)"))
    ctes.insert(0, (_INTERNAL + "m", f"SELECT {_select_list(m_items)} FROM {merged}{group}"))
    by_call = {id(a.call): a for a in spec.aggs}
    outs = [(name, compile_expr(e, [], lambda c: finished[by_call[id(c)].index])) for name, e in spec.outputs]
    select = [(name, f"m.{_k(i)}") for i, (name, _) in enumerate(spec.keys)] + outs
    sql = f"SELECT {_select_list(select)} FROM {ident(_INTERNAL + 'm')} AS m{''.join(joins)}"
    return ctes, sql, _Rel([n for n, _ in select])


# -- the whole query ---------------------------------------------------------------

LOCAL = (Where, Project, ProjectAway, Extend)


def _node_filter(ops: list[query.Op]) -> tuple[frozenset[str] | None, frozenset[str]]:
    """Nodes a where clause before any redefinition of `node` allows or excludes."""
    only: set[str] | None = None
    excluded: set[str] = set()
    for op in ops:
        if isinstance(op, Last | Since | Between):
            continue
        if not isinstance(op, Where):
            break
        for c in _conjuncts(op.predicate):
            if isinstance(c, Binary) and c.op in ("==", "!="):
                col, lit = (c.left, c.right) if isinstance(c.left, Col) else (c.right, c.left)
                if isinstance(col, Col) and col.name.lower() == NODE and isinstance(lit, Lit) and lit.kind == "str":
                    if c.op == "==":
                        only = {str(lit.value)} if only is None else only & {str(lit.value)}
                    else:
                        excluded.add(str(lit.value))
            elif isinstance(c, InList) and not c.negate and isinstance(c.operand, Col) \
                    and c.operand.name.lower() == NODE and all(isinstance(i, Lit) and i.kind == "str" for i in c.items):
                names = {str(i.value) for i in c.items if isinstance(i, Lit)}
                only = names if only is None else only & names
    return (None if only is None else frozenset(only)), frozenset(excluded)


def _conjuncts(e: Expr) -> list[Expr]:
    if isinstance(e, Binary) and e.op == "and":
        return _conjuncts(e.left) + _conjuncts(e.right)
    return [e]


def _with(ctes: list[tuple[str, str]], select: str, *, inline: bool = False) -> str:
    """``inline``: never materialize a row-level CTE (DuckDB otherwise materializes one
    that is read twice, as the top-N pushdown does: a copy of every row); the top-N
    threshold (TOP_N_THRESHOLD, one row read three times) is materialized, computed once."""
    if not ctes:
        return select
    def how(name: str) -> str:
        if not inline:
            return ""
        return " MATERIALIZED" if name == TOP_N_THRESHOLD else " NOT MATERIALIZED"
    return "WITH " + ", ".join(f"{ident(n)} AS{how(n)} ({s})" for n, s in ctes) + " " + select


def _collector_stages(ops: list[query.Op], rel: _Rel, ctes: list[tuple[str, str]],
                      prev: str) -> tuple[str, _Rel]:
    """Chain ``ops`` after ``prev`` (all of them run where every row is); returns the last name."""
    for op in ops:
        name = f"{_INTERNAL}s{len(ctes)}"
        sql, rel = _stage(op, rel)
        ctes.append((name, sql.replace(PREV, ident(prev))))
        prev = name
    return prev, rel


def _stage(op: query.Op, rel: _Rel) -> tuple[str, _Rel]:
    """Any operator's single-database SQL over PREV."""
    try:
        if isinstance(op, LOCAL):
            return _local_stage(op, rel)
        if isinstance(op, Summarize):
            return _summarize_single(_summarize_spec(op, rel), rel)
        if isinstance(op, Distinct):
            cols = rel.user if not op.names else [resolve(c.name, c.pos, rel.user) for c in op.names]
            return f"SELECT DISTINCT {', '.join(ident(c) for c in cols)} FROM {PREV}", _Rel(cols)
        if isinstance(op, Sort | Top):
            keys = op.keys if isinstance(op, Sort) else (op.key,)
            order = ", ".join(_sort_order(keys, rel))
            col_list = ", ".join(ident(c) for c in rel.user)
            limit = f" QUALIFY {ident(ORD)} <= {op.count}" if isinstance(op, Top) else ""
            return (f"SELECT {col_list}, row_number() OVER (ORDER BY {order}) AS {ident(ORD)} FROM {PREV}{limit}",
                    _Rel([*rel.user, ORD], True))
        if isinstance(op, Take):
            return f"SELECT * FROM {PREV} ORDER BY {', '.join(_take_order(rel))} LIMIT {op.count}", rel
        if isinstance(op, Last | Since | Between):
            raise _Err("the time range ('last', 'since', 'between') must come before summarize, sort, take, "
                       "top and distinct", op.pos)
    except ValueError as exc:  # a name that is not plain cannot reach SQL
        raise _Err(str(exc), getattr(op, "pos", None)) from exc
    raise AssertionError(op)


def _final_select(rel: _Rel, prev: str) -> str:
    cols = ", ".join(ident(c) for c in rel.user)
    return f"SELECT {cols} FROM {ident(prev)} ORDER BY {', '.join(_default_order(rel))}"


def _probe_types(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]) -> list[tuple[str, str]]:
    rel = con.sql(f"SELECT * FROM ({sql}) LIMIT 0", params=params or None)
    return [(n, str(t)) for n, t in zip(rel.columns, rel.types, strict=True)]


def _first_line(exc: Exception) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"^[A-Za-z ]+ Error: ", "", msg)


def plan_pipe(text: str, catalog: Mapping[str, Table], *, now: dt.datetime) -> Plan:
    p = query.parse(text)
    table_name = p.table
    if table_name not in catalog:
        lowered = {t.lower(): t for t in catalog}
        if table_name.lower() not in lowered:
            raise unknown_table(text, p.table_pos, table_name, catalog)
        table_name = lowered[table_name.lower()]
    table = catalog[table_name]
    try:
        start, end = _time_range(p, table, now)
        # Everything but the time range depends only on the text and the table (the
        # range reaches the edges as $start and $end), so a repeated query reuses its plan.
        plan = _plan_cached(text, table)
    except _Err as exc:
        raise QueryError.at(text, exc.pos, exc.message, exc.hint) from None
    return dataclasses.replace(plan, start=start, end=end) if plan.start is not None else plan


def _time_range(p: query.Pipeline, table: Table, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The opener's absolute UTC bounds, resolved against ``now`` (None, None without one)."""
    rng = p.range_op
    if rng is None:
        return None, None
    if "time" not in table.column_names:
        raise _Err(f"table {table.name} has no time column to take a range of", rng.pos)
    if isinstance(rng, Last):
        return now - dt.timedelta(seconds=rng.seconds), now
    if isinstance(rng, Since):
        if rng.start >= now:
            raise _Err("'since' is in the future", rng.pos)
        return rng.start, now
    return rng.start, rng.end


_PROBE_NOW = dt.datetime(2100, 1, 1)  # after any 'since': only the SQL's types depend on it


def _op_refs(op: query.Op) -> list[str]:
    """The columns a row-local operator or a summarize reads (lower case)."""
    if isinstance(op, Where):
        return _refs(op.predicate)
    if isinstance(op, (Project, Extend)):
        return [c for it in op.items for c in _refs(it.expr)]
    if isinstance(op, ProjectAway):
        return [c.name.lower() for c in op.names]
    if isinstance(op, Summarize):
        return [c for it in (*op.aggs, *op.keys) for c in _refs(it.expr)]
    raise AssertionError(f"no column list for {type(op).__name__}")


def _edge_columns(head: list[query.Op], cols: list[str]) -> list[str]:
    """The columns an edge's first stage selects: when the edge's part ends in a
    summarize, only those it reads (binding every column of a wide table costs the
    edge as much as a tenth of a count by pod); otherwise all of them. Unknown names
    were refused already, by the single-database form, with every column to hint from."""
    if not head or not isinstance(head[-1], Summarize):
        return cols
    used = {c for op in head for c in _op_refs(op)}
    return [c for c in cols if c == NODE or c.lower() in used]


@functools.lru_cache(maxsize=256)
def _plan_cached(text: str, table: Table) -> Plan:
    """The plan of ``text``, its range resolved against a fixed instant (callers put the
    real bounds in): a pure function of its arguments, so it can be remembered."""
    p = query.parse(text)
    return _plan(text, p, table, *_time_range(p, table, _PROBE_NOW))


def _plan(text: str, p: query.Pipeline, table: Table, start: dt.datetime | None, end: dt.datetime | None) -> Plan:
    cols = [NODE, *[c for c in table.column_names if c != NODE]]
    where = ""
    if p.range_op is not None:
        where = f' WHERE {ident("time")} >= $start AND {ident("time")} < $end'
    ops = [op for op in p.ops if not isinstance(op, Last | Since | Between)]
    # A range written after a global operator is refused (it filters the table, so it
    # belongs before anything that needs every node's rows).
    first_global = next((i for i, op in enumerate(p.ops) if not isinstance(op, (*LOCAL, Last, Since, Between))), None)
    rng = p.range_op
    if rng is not None and first_global is not None and p.ops.index(rng) > first_global:
        raise _Err("the time range ('last', 'since', 'between') must come before summarize, sort, take, top "
                   "and distinct", rng.pos)
    base_single = f"SELECT {ident(NODE)}, {', '.join(ident(c) for c in cols[1:])} FROM {ident(table.name)}{where}"
    params: dict[str, object] = {"start": start, "end": end} if where else {}

    # The single-database form: every operator in order (the reference, and the answer's shape).
    single: list[tuple[str, str]] = [(_INTERNAL + "s0", base_single)]
    last, out_rel = _collector_stages(ops, _Rel(list(cols)), single, _INTERNAL + "s0")
    reference_sql = _with(single, _final_select(out_rel, last))

    # The edge: the row-local prefix, then the split operator's partial form.
    split = next((i for i, op in enumerate(ops) if not isinstance(op, LOCAL)), len(ops))
    edge_cols = _edge_columns(ops[:split + 1], cols)
    base_edge = ("SELECT ", f" AS {ident(NODE)}{''.join(', ' + ident(c) for c in edge_cols[1:])} "
                            f"FROM {ident(table.name)}{where}")
    edge_ctes: list[tuple[str, str]] = []
    rel = _Rel(list(edge_cols))
    prev = _INTERNAL + "s0"
    for op in ops[:split]:
        name = f"{_INTERNAL}s{len(edge_ctes) + 1}"
        sql, rel = _stage(op, rel)
        edge_ctes.append((name, sql.replace(PREV, ident(prev))))
        prev = name
    rest = ops[split:]
    merged = ident(table.name)
    final_ctes: list[tuple[str, str]] = []
    edge_limit = 0
    complete = True
    head = rest[0] if rest else None
    approx: set[str] = set()
    if isinstance(head, Summarize):
        spec = _summarize_spec(head, rel)
        _check_sketch_args(spec, table, sql_literal("probe").join(base_edge), edge_ctes, prev, params)
        approx = {name.lower() for name, e in spec.outputs if any(c.name in SKETCH for c in _agg_calls(e))}
        approx = _approximate_after(rest[1:], approx)
        edge_select = _summarize_edge(spec).replace(PREV, ident(prev))
        ctes, sql, srel = _summarize_final(spec, merged)
        final_ctes += [*ctes, (_INTERNAL + "f0", sql)]
        last, frel = _collector_stages(rest[1:], srel, final_ctes, _INTERNAL + "f0")
    else:
        if isinstance(head, Distinct):
            sql, _ = _stage(head, rel)
            edge_select = sql.replace(PREV, ident(prev))
        elif isinstance(head, (Take, Top)) or (
                isinstance(head, Sort) and len(rest) > 1 and isinstance(rest[1], Take)):
            # top-N pushdown: each edge sends its own first N rows in the query's total order
            if isinstance(head, Take):
                keys = [(ident("time"), True)] if "time" in rel.user else []
                n = head.count
            else:
                sort_keys = (head.key,) if isinstance(head, Top) else head.keys  # type: ignore[union-attr]
                keys = [(compile_expr(k.expr, rel.user), k.desc) for k in sort_keys]
                n = head.count if isinstance(head, Top) else rest[1].count  # type: ignore[union-attr]
            edge_select, edge_limit = _top_n_edge(ident(prev), keys, n, rel, edge_ctes)
        else:
            edge_select = f"SELECT * FROM {ident(prev)}"
            # Rows the collector only sorts may be cut at the cap (the answer says truncated);
            # rows it still has to aggregate or cut must all arrive.
            complete = any(not isinstance(op, (*LOCAL, Sort)) for op in rest)
        if edge_limit:
            complete = any(not isinstance(op, (*LOCAL, Sort, Take, Top)) for op in rest)
        last, frel = _collector_stages(rest, _Rel(list(rel.user)), final_ctes, table.name)
    final_sql = _with(final_ctes, _final_select(frel, last))
    edge_sql = _with([(_INTERNAL + "s0", ""), *edge_ctes], edge_select, inline=True)
    # the node literal goes into s0: split the SQL around it
    head_sql, tail_sql = edge_sql.split(f"{ident(_INTERNAL + 's0')} AS NOT MATERIALIZED ()", 1)
    parts = (f"{head_sql}{ident(_INTERNAL + 's0')} AS NOT MATERIALIZED ({base_edge[0]}", f"{base_edge[1]}){tail_sql}")

    # Bind both halves on empty tables: type errors surface now, with a position.
    with scratch() as con:
        con.execute(table.ddl(temp=True))
        try:
            columns = _probe_types(con, sql_literal("probe").join(parts), params)
        except duckdb.Error as exc:
            raise _locate(con, text, ops, cols, table, params, exc) from None
    fragment = Fragment(table.name, parts, tuple(columns))
    with scratch() as con:
        con.execute(f"CREATE TEMP TABLE {merged} ({', '.join(f'{ident(n)} {t}' for n, t in columns)})")
        try:
            con.sql(final_sql).limit(0).fetchall()
        except duckdb.Error as exc:
            pos = next((op.pos for op in rest), None) if rest else None
            raise _Err(_first_line(exc), pos) from None
    for sql in (fragment.sql("probe"), final_sql):
        try:
            sqlgate.check(sql, [table.name])
        except sqlgate.SqlRefused as exc:  # a planner bug, never user input
            raise _Err(f"internal error: the planned SQL was refused ({exc.message})", None) from exc
    only, excluded = _node_filter(ops)
    return Plan({table.name: fragment}, final_sql, start, end, edge_limit, complete, only, excluded,
                reference_sql, tuple(out_rel.user), tuple(c for c in out_rel.user if c.lower() in approx))


def _check_sketch_args(spec: _SummarizeSpec, table: Table, base: str, ctes: list[tuple[str, str]], prev: str,
                       params: dict[str, object]) -> None:
    """Sketch percentiles take numbers: refuse any other type at the call, naming it, and
    note each argument's type in ``spec`` (it picks the bucket's form). ``base`` is the
    edge's first stage (a probe node's), ``ctes`` the stages after it."""
    calls = [a for a in spec.aggs if a.call.name in SKETCH]
    if not calls:
        return
    sql = _with([(_INTERNAL + "s0", base), *ctes], f"SELECT {', '.join(a.arg for a in calls)} FROM {ident(prev)}")
    with scratch() as con:
        con.execute(table.ddl(temp=True))
        try:
            types = _probe_types(con, sql, params)
        except duckdb.Error:
            return  # the argument does not bind: the full probe reports it with its position
    for a, (_, typ) in zip(calls, types, strict=True):
        if not NUMERIC_TYPES.match(typ):
            raise _Err(f"{a.call.name}() is approximate and takes a number, not {typ}", a.call.pos,
                       "percentile_exact(x, q) takes any ordered value, exactly")
        a.arg_type = typ


def _locate(con: duckdb.DuckDBPyConnection, text: str, ops: list[query.Op], cols: list[str], table: Table,
            params: dict[str, object], exc: duckdb.Error) -> _Err:
    """The first operator whose stage does not bind, as a positioned error."""
    base = f"SELECT 'probe' AS {ident(NODE)}, {', '.join(ident(c) for c in cols[1:])} FROM {ident(table.name)}"
    base += ' WHERE "time" >= $start AND "time" < $end' if params else ""
    ctes = [(_INTERNAL + "s0", base)]
    rel = _Rel(list(cols))
    prev = _INTERNAL + "s0"
    for op in ops:
        try:
            sql, rel = _stage(op, rel)
        except _Err as err:
            return err
        name = f"{_INTERNAL}s{len(ctes)}"
        ctes.append((name, sql.replace(PREV, ident(prev))))
        prev = name
        try:
            _probe_types(con, _with(ctes, f"SELECT * FROM {ident(prev)}"), params)
        except duckdb.Error as inner:
            return _Err(_first_line(inner), op.pos)
    return _Err(_first_line(exc), None)


def plan_sql(text: str, catalog: Mapping[str, Table]) -> Plan:
    """The SQL form: gate it, ship each table it reads, run it at the collector."""
    try:
        used = sqlgate.check(text, catalog)
    except sqlgate.SqlRefused as exc:
        if exc.message.startswith("unknown table"):
            name = exc.message.split("'")[1] if "'" in exc.message else "?"
            raise unknown_table(text, exc.position, name, catalog) from exc
        raise QueryError.at(text, exc.position, exc.message, exc.hint) from exc
    fragments = {}
    for t in sorted(used):
        table = catalog[t]
        cols = ((NODE, "VARCHAR"), *[(c.name, c.type) for c in table.columns if c.name != NODE])
        fragments[t] = Fragment(t, (f"SELECT * FROM {ident(t)}",), cols, add_node=True)
    return Plan(fragments, text, complete=True)


__all__ = ["Fragment", "Plan", "plan_pipe", "plan_sql", "sql_literal"]
