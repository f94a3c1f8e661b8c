"""From query text to Plan: parse (query.py), bind against the table (binder.py), split
into edge and collector parts (split.py, with the rules/), render each to SQL
(render.py); and the SQL form, which is gated and shipped as it is.

The time range is resolved here, once, into absolute UTC bounds that every edge
receives as $start and $end: edges never call now(). Everything else depends only on
the query's text and its table, so a repeated query reuses its plan.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
from collections.abc import Mapping

from pxo.collector import query
from pxo.collector.errors import QueryError, UnknownTable, position
from pxo.collector.plan import sql as s
from pxo.collector.plan.aggregates import AGGREGATIONS
from pxo.collector.plan.binder import bind
from pxo.collector.plan.ir import (
    NODE,
    OV,
    ROW_LOCAL,
    AggRef,
    Aggregate,
    Distinct,
    FinalAggregate,
    Op,
    Project,
    chain,
    reads,
    walk,
)
from pxo.collector.plan.model import Fragment, Plan
from pxo.collector.plan.render import Chain, final_select, render, select_of
from pxo.collector.plan.rules.node_pruning import node_filter
from pxo.collector.plan.split import split
from pxo.common import sqlgate
from pxo.common.schema import Table


def unknown_table(text: str, pos: int | None, name: str, catalog: Mapping[str, Table]) -> UnknownTable:
    line, column = position(text, pos)
    if not catalog:
        return UnknownTable(name, f"unknown table {name!r}: no edge has registered yet, so no table exists",
                            line=line, column=column)
    close = difflib.get_close_matches(name, list(catalog), n=1)
    hint = (f"did you mean {close[0]}? " if close else "") + "tables: " + ", ".join(sorted(catalog))
    return UnknownTable(name, f"unknown table {name!r}", line=line, column=column, hint=hint)


def plan_pipe(text: str, catalog: Mapping[str, Table], *, now: dt.datetime) -> Plan:
    p = query.parse(text)
    name = p.table
    if name not in catalog:
        lowered = {t.lower(): t for t in catalog}
        if name.lower() not in lowered:
            raise unknown_table(text, p.table_pos, name, catalog)
        name = lowered[name.lower()]
    table = catalog[name]
    start, end = _time_range(text, p, table, now)
    plan = _plan_cached(text, table)
    return dataclasses.replace(plan, start=start, end=end) if start is not None else plan


def _time_range(text: str, p: query.Pipeline, table: Table,
                now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The range's absolute UTC bounds, resolved against ``now`` (None, None without one)."""
    rng = p.range_op
    if rng is None:
        return None, None
    if "time" not in table.column_names:
        raise QueryError.at(text, rng.pos, f"table {table.name} has no time column to take a range of")
    if isinstance(rng, query.Last):
        return now - dt.timedelta(seconds=rng.seconds), now
    if isinstance(rng, query.Since):
        if rng.start >= now:
            raise QueryError.at(text, rng.pos, "'since' is in the future")
        return rng.start, now
    return rng.start, rng.end


@functools.lru_cache(maxsize=256)
def _plan_cached(text: str, table: Table) -> Plan:
    """The plan of ``text`` over ``table``, without its time bounds (callers put them in):
    a pure function of its arguments, so it can be remembered."""
    bound = bind(text, query.parse(text), table)
    parts = split(bound.plan)
    edge = Chain(edge=True)
    root = parts.edge
    body: s.Sql
    if root.input is None or isinstance(root, ROW_LOCAL):  # its rows, as they are
        body = s.from_(s.select(s.star()), render(root, edge))
    else:
        body = select_of(root, render(root.input, edge), edge)
    columns = [(f.name, f.type.sql) for f in root.fields] + ([(OV, "INTEGER")] if root.overflow else [])
    tree = s.with_(edge.ctes, body)
    fragment = Fragment(table.name, tree, tuple(columns), text=s.to_sql(tree))
    final = Chain(edge=False)
    final_sql = s.to_sql(s.with_(final.ctes, final_select(parts.collector, render(parts.collector, final))))
    for sql in (fragment.sql("probe"), final_sql):
        try:
            sqlgate.check(sql, [table.name])
        except sqlgate.SqlRefused as exc:  # a planner bug, never the user's
            raise AssertionError(f"the planned SQL was refused ({exc.message}): {sql}") from exc
    only, excluded = node_filter(bound.plan)
    approx = _approximate(parts.collector)
    return Plan({table.name: fragment}, final_sql, None, None, parts.edge_row_limit, parts.complete, only, excluded,
                tuple(c for c in parts.collector.names() if c in approx), text, bound.sites,
                OV if parts.collector.overflow else "")


def _approximate(collector: Op) -> set[str]:
    """The answer's columns computed from a sketch: the approximate percentiles merged at
    the collector, and every column computed from one."""
    approx: set[str] = set()
    for op in chain(collector):
        if isinstance(op, FinalAggregate):
            sketched = {i for i, a in enumerate(op.summary.aggs) if AGGREGATIONS[a.fn].approximate}
            approx = {n for n, e in op.summary.outputs
                      if any(isinstance(x, AggRef) and x.index in sketched for x in walk(e))}
        elif isinstance(op, Project):
            approx = {n for n, e in op.items if reads(e) & approx}
        elif isinstance(op, Aggregate):
            tainted = {i for i, a in enumerate(op.summary.aggs) if any(reads(x) & approx for x in a.args)}
            approx = {n for n, e in op.summary.keys if reads(e) & approx} | {
                n for n, e in op.summary.outputs if any(isinstance(x, AggRef) and x.index in tainted for x in walk(e))}
        elif isinstance(op, Distinct):
            approx &= set(op.columns)
    return approx


def plan_sql(text: str, catalog: Mapping[str, Table]) -> Plan:
    """The SQL form: gate it, ship each table it reads, run it at the collector."""
    try:
        used = sqlgate.check(text, catalog)
    except sqlgate.SqlRefused as exc:
        if exc.table is not None:
            raise unknown_table(text, exc.position, exc.table, catalog) from exc
        raise QueryError.at(text, exc.position, exc.message, exc.hint) from exc
    fragments = {}
    for t in sorted(used):
        table = catalog[t]
        cols = ((NODE, "VARCHAR"), *[(c.name, c.type) for c in table.columns if c.name != NODE])
        tree = s.from_(s.select(s.star()), t)
        fragments[t] = Fragment(t, tree, cols, add_node=True, text=s.to_sql(tree))
    return Plan(fragments, text, complete=True, text=text)
