"""Operators as SQL: each one a SELECT over the one below it (a chain of CTEs), built as a
syntax tree; the text comes last (sql.to_sql), with the node and the time range as
bound parameters.

Total orders: every ORDER BY ends with every column of the relation (ascending, nulls
last), so "the first N rows" does not depend on how rows are spread over nodes. A
relation that went through a sort carries its row number in a hidden column (ir.ORD);
one with checked int arithmetic carries the overflow witness (ir.OV, render_expr.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from pxo.collector.plan import sql as s
from pxo.collector.plan.aggregates import AGGREGATIONS, WEIGHT, holistic_columns, holistic_key, holistic_sql
from pxo.collector.plan.ir import (
    INTERNAL,
    NODE,
    ORD,
    OV,
    Aggregate,
    Distinct,
    Filter,
    FinalAggregate,
    Gather,
    Limit,
    Op,
    PartialAggregate,
    Project,
    Scan,
    Sort,
    SortKey,
    Summary,
    TopN,
)
from pxo.collector.plan.render_expr import Renderer

THRESHOLD = INTERNAL + "thr"  # the CTE holding an edge's N-th sort key (top-N pushdown)
M = INTERNAL + "m"  # the CTE merging a summarize's partials, per group


@dataclass
class Chain:
    """The CTEs rendered so far (name, SELECT, materialized: True/False/None)."""

    edge: bool  # at an edge: row-level CTEs are never materialized (see ``add``)
    ctes: list[tuple[str, s.Sql, bool | None]] = field(default_factory=list)

    def add(self, q: s.Sql, name: str = "", *, materialized: bool | None = None) -> str:
        """DuckDB materializes a CTE read twice (as the top-N pushdown reads its input): at
        an edge that is a copy of every row, so its CTEs are inlined unless told."""
        name = name or f"{INTERNAL}s{len(self.ctes)}"
        self.ctes.append((name, q, materialized if materialized is not None else (False if self.edge else None)))
        return name


def hidden(op: Op) -> list[str]:
    return ([ORD] if op.ordered else []) + ([OV] if op.overflow else [])


def _all_columns(op: Op) -> list[exp.Ordered]:
    return [s.ordered(s.col(n)) for n in op.names()]


def default_order(op: Op) -> list[exp.Ordered]:
    """An answer's order: a sort's, else by time when there is one, then every column."""
    if op.ordered:
        return [s.ordered(s.col(ORD))]
    lead = [s.ordered(s.col("time"))] if "time" in op.names() else []
    return lead + _all_columns(op)


def take_order(op: Op) -> list[exp.Ordered]:
    """take keeps a sort's first rows, else the newest (then every column decides)."""
    if op.ordered:
        return [s.ordered(s.col(ORD))]
    lead = [s.ordered(s.col("time"), desc=True)] if "time" in op.names() else []
    return lead + _all_columns(op)


def sort_order(op: Op, keys: tuple[SortKey, ...]) -> list[exp.Ordered]:
    """The total order of a sort over ``op``: its keys, then every column."""
    r = Renderer()
    return [s.ordered(r(k.expr), desc=k.desc) for k in keys] + _all_columns(op)


def render(op: Op, chain: Chain) -> str:
    """Adds ``op`` and everything below it to ``chain``; returns the name of op's rows."""
    if isinstance(op, Gather):
        return op.table
    q = select_of(op, render(op.input, chain) if op.input is not None else "", chain)
    return chain.add(q)


def select_of(op: Op, prev: str, chain: Chain) -> s.Sql:
    """The SELECT of ``op`` over the relation named ``prev``."""
    r = Renderer()
    below = op.input
    if isinstance(op, Scan):
        return _scan(op)
    assert below is not None
    # the row's overflow witness (the aggregates and the top N keep their own)
    ov = r.overflow(op.exprs(), below.overflow) if isinstance(op, (Filter, Project, Distinct, Sort)) else None
    if isinstance(op, Filter):
        if ov is None:
            return s.from_(s.select(exp.Star()), prev).where(r(op.predicate), copy=False)
        # a row that overflowed stays, whatever the predicate says: the collector reports it
        q = s.from_(s.select(*[s.col(n) for n in [*below.names(), *hidden(below)] if n != OV], (OV, ov)), prev)
        return q.where(s.or_(r(op.predicate), s.not_null(ov.copy())), copy=False)
    if isinstance(op, Project):
        items: list[tuple[str, s.Sql] | s.Sql] = [(n, r.value(e)) for n, e in op.items]
        items += [s.col(ORD)] if below.ordered else []
        items += [(OV, ov)] if ov is not None else []
        return s.from_(s.select(*items), prev)
    if isinstance(op, Aggregate):
        return _aggregate_single(op, prev, r)
    if isinstance(op, Distinct):
        return s.from_(s.select(*[s.col(n) for n in [*op.columns, *([OV] if ov is not None else [])]]), prev).distinct()
    if isinstance(op, Sort):
        order = sort_order(below, op.keys)
        number = s.window(exp.RowNumber(), order=order)
        items = [*[s.col(n) for n in below.names()], (ORD, number)]
        items += [(OV, ov)] if ov is not None else []
        q = s.from_(s.select(*items), prev)
        if op.limit is not None:
            # the row number itself, not its name: over a sorted input, ORD names the input's
            # column too, and QUALIFY resolves a name to the input's column first
            cut: s.Sql = exp.LTE(this=number.copy(), expression=s.num(op.limit))
            # (the row's witness as computed here: the name would be the input's column)
            q.set("qualify", exp.Qualify(this=s.or_(cut, s.not_null(ov.copy())) if ov is not None else cut))
        return q
    if isinstance(op, Limit):
        q = s.from_(s.select(exp.Star()), prev)
        order = ([s.ordered(s.col(OV))] if below.overflow else []) + take_order(below)
        q.set("order", exp.Order(expressions=order))
        q.set("limit", exp.Limit(expression=s.num(op.count)))
        return q
    if isinstance(op, PartialAggregate):
        return _aggregate_partial(op, prev, r)
    if isinstance(op, FinalAggregate):
        return _aggregate_final(op.summary, prev, chain, below.overflow)
    assert isinstance(op, TopN)
    return _top_n(op, prev, chain)


def _scan(op: Scan) -> s.Sql:
    node = s.param(NODE) if op.at_edge else s.col(NODE)
    q = s.from_(s.select((NODE, node), *[s.col(f.name) for f in op.columns[1:]]), op.table)
    if op.ranged:
        q = q.where(s.and_(exp.GTE(this=s.col("time"), expression=s.param("start")),
                           exp.LT(this=s.col("time"), expression=s.param("end"))), copy=False)
    return q


def _group_by(q: exp.Select, n: int) -> exp.Select:
    if n:
        q.set("group", exp.Group(expressions=[s.num(i + 1) for i in range(n)]))
    return q


def _aggregate_single(op: Aggregate, prev: str, r: Renderer) -> s.Sql:
    summary, below = op.summary, op.source
    single = Renderer(agg=lambda i: AGGREGATIONS[summary.aggs[i].fn].single(
        summary.aggs[i], [r(x) for x in summary.aggs[i].args]))
    items: list[tuple[str, s.Sql] | s.Sql] = [(n, r.value(e)) for n, e in summary.keys]
    items += [(n, single.value(e)) for n, e in summary.outputs]
    row_ov = r.overflow(summary.exprs(), below.overflow)
    per_group = [s.fn("min", row_ov)] if row_ov is not None else []
    ov = single.overflow([e for _, e in summary.outputs], False)
    if per_group or ov is not None:
        items.append((OV, per_group[0] if ov is None else s.fn("coalesce", *per_group, ov)))
    return _group_by(s.from_(s.select(*items), prev), len(summary.keys))


def _aggregate_partial(op: PartialAggregate, prev: str, r: Renderer) -> s.Sql:
    summary = op.summary
    items: list[tuple[str, s.Sql] | s.Sql] = [(f"{INTERNAL}k{i}", r(e)) for i, (_, e) in enumerate(summary.keys)]
    holistic = holistic_columns(summary)
    for j, (_, i) in enumerate(holistic):
        a = summary.aggs[i]
        items.append((f"{INTERNAL}h{j}", holistic_sql(a, r(a.args[0]))))
    if holistic:
        items.append((WEIGHT, exp.Count(this=exp.Star())))
    for i, a in enumerate(summary.aggs):
        agg = AGGREGATIONS[a.fn]
        for (suffix, _), value in zip(agg.parts(a), agg.partial(a, [r(x) for x in a.args]), strict=True):
            items.append((f"{INTERNAL}a{i}{suffix}", value))
    ov = r.overflow(summary.exprs(), op.source.overflow)
    if ov is not None:
        items.append((OV, s.fn("min", ov)))
    return _group_by(s.from_(s.select(*items), prev), len(summary.keys) + len(holistic))


class _Merge:
    """aggregates.Merge for one aggregation of a FinalAggregate."""

    def __init__(self, final: _Final, index: int) -> None:
        self.final, self.index = final, index

    def part(self, suffix: str = "") -> s.Sql:
        return s.col(f"{INTERNAL}a{self.index}{suffix}")

    def holistic(self) -> s.Sql:
        return s.col(self.final.holistic[holistic_key(self.final.summary.aggs[self.index])])

    def simple(self, value: s.Sql) -> s.Sql:
        name = f"{INTERNAL}a{self.index}"
        self.final.merged_items.append((name, value))
        return s.col(name, M)

    def windowed(self, build: object) -> s.Sql:
        base = f"{INTERNAL}x{self.index}"
        queries = build(self.final.keys, self.final.merged, lambda suffix: base + suffix)  # type: ignore[operator]
        for suffix, q in queries:
            self.final.chain.add(q, base + suffix)
        on = s.and_(*[exp.NullSafeEQ(this=s.col(k, M), expression=s.col(k, base)) for k in self.final.keys]) \
            if self.final.keys else exp.Boolean(this=True)
        self.final.joins.append(exp.Join(this=s.table(base), side="LEFT", on=on))
        return s.col("v", base)


@dataclass
class _Final:
    summary: Summary
    merged: str
    chain: Chain
    keys: list[str]
    holistic: dict[object, str]
    merged_items: list[tuple[str, s.Sql]] = field(default_factory=list)
    joins: list[exp.Join] = field(default_factory=list)


def _aggregate_final(summary: Summary, merged: str, chain: Chain, carries_ov: bool) -> s.Sql:
    """The merge of the partials (a CTE M, grouped by the keys), the CTEs of the finishes
    that need their own, and the SELECT of the summarize's result joining them."""
    keys = [f"{INTERNAL}k{i}" for i in range(len(summary.keys))]
    holistic = {key: f"{INTERNAL}h{j}" for j, (key, _) in enumerate(holistic_columns(summary))}
    final = _Final(summary, merged, chain, keys, holistic)
    at = len(chain.ctes)  # M goes before the finishes' CTEs (the SELECT reads them all)
    finished = [AGGREGATIONS[a.fn].finish(a, _Merge(final, i)) for i, a in enumerate(summary.aggs)]
    m_items: list[tuple[str, s.Sql] | s.Sql] = [s.col(k) for k in keys]
    m_items += final.merged_items
    if carries_ov:
        m_items.append((OV, s.fn("min", s.col(OV))))
    if not m_items:  # no keys and nothing merged in m: one row to join the finishes to
        m_items.append((f"{INTERNAL}n", exp.Count(this=exp.Star())))
    m = s.from_(s.select(*m_items), merged)
    if keys:
        m.set("group", exp.Group(expressions=[s.col(k) for k in keys]))
    chain.ctes.insert(at, (M, m, None))
    value = Renderer(column=lambda n: s.col(n, M), agg=lambda i: finished[i].copy())
    items: list[tuple[str, s.Sql] | s.Sql] = [(name, s.col(k, M)) for (name, _), k in zip(summary.keys, keys,
                                                                                             strict=True)]
    items += [(name, value.value(e)) for name, e in summary.outputs]
    ov = value.overflow([e for _, e in summary.outputs], False)
    if carries_ov or ov is not None:
        parts = ([s.col(OV, M)] if carries_ov else []) + ([ov] if ov is not None else [])
        items.append((OV, parts[0] if len(parts) == 1 else s.fn("coalesce", *parts)))
    q = s.from_(s.select(*items), M)
    for j in final.joins:
        q.append("joins", j)
    return q


def _top_n(op: TopN, prev: str, chain: Chain) -> s.Sql:
    """An edge's share of a top N: its first N rows in the total order (the sort keys, then
    every column), and its overflow witness if any (rules/topn.py says how and why)."""
    r = Renderer()
    below = op.source
    cols = [s.col(n) for n in [*below.names(), *([OV] if below.overflow else [])]]
    total = sort_order(below, op.keys)

    def first_n(where: s.Sql | None) -> s.Sql:
        q = s.from_(s.select(*[c.copy() for c in cols]), prev)
        if where is not None:
            q = q.where(where, copy=False)
        q.set("order", exp.Order(expressions=[o.copy() for o in total]))
        q.set("limit", exp.Limit(expression=s.num(op.count)))
        return q

    witness = [s.from_(s.select(exp.Star()), s.subquery(
        s.from_(s.select(*[c.copy() for c in cols]), prev).where(s.not_null(s.col(OV)), copy=False).limit(1,
                                                                                                        copy=False)))
               ] if below.overflow else []
    # a row whose sort key overflowed has a null key here, so the sort may cut it: one such row
    # is shipped apart, so the collector, computing the keys again, reports the overflow
    key_ov = r.overflow([k.expr for k in op.keys], False) if op.count else None
    if key_ov is not None:
        witness.append(s.from_(s.select(exp.Star()), s.subquery(
            s.from_(s.select(*[c.copy() for c in cols]), prev).where(s.not_null(key_ov), copy=False).limit(
                1, copy=False))))
    if len(op.keys) != 1 or op.count == 0:
        parts = [*witness, s.from_(s.select(exp.Star()), s.subquery(first_n(None)))]
    else:
        (key,) = op.keys
        k = r(key.expr)
        lead = s.ordered(k.copy(), desc=key.desc)
        threshold = s.from_(s.select(("t", s.fn("min" if key.desc else "max", s.col("t")))), s.subquery(
            _limited(s.from_(s.select(("t", k.copy())), prev), [lead], op.count)))
        chain.add(threshold, THRESHOLD, materialized=True)  # one row, read by each part: computed once
        t = s.subquery(s.from_(s.select(s.col("t")), THRESHOLD))
        near = (exp.GTE if key.desc else exp.LTE)(this=k.copy(), expression=t)
        # The rows at or before T, and those with a null key (each a filter DuckDB pushes into
        # its scan), sorted once, by COLUMNS(*): every column, as ``total`` has them. ``prev``'s
        # columns are its names then ``hidden(below)``; unless ``below`` is ordered (it carries
        # ORD too) those are ``cols``, so ``*`` selects them and the SQL names each column once,
        # not three times more (planning that SQL was most of what the fragment cost beyond
        # DuckDB's own top-N).
        def rows(where: s.Sql) -> exp.Select:
            picked = [c.copy() for c in cols] if below.ordered else [exp.Star()]
            return s.from_(s.select(*picked), prev).where(where, copy=False)

        near_or_null = exp.Union(this=rows(near), expression=rows(s.is_null(k.copy())), distinct=False)
        every = exp.Star(except_=[s.col(OV)]) if below.overflow else exp.Star()
        q = s.from_(s.select(exp.Star()), s.subquery(near_or_null))
        q.set("order", exp.Order(expressions=[lead.copy(), s.ordered(exp.Columns(this=every))]))
        q.set("limit", exp.Limit(expression=s.num(op.count)))
        parts = [*witness, s.from_(s.select(exp.Star()), s.subquery(q))]
    out: s.Sql = parts[0]
    for p in parts[1:]:
        out = exp.Union(this=out, expression=p, distinct=False)
    return out


def _limited(q: exp.Select, order: list[exp.Ordered], n: int) -> exp.Select:
    q.set("order", exp.Order(expressions=order))
    q.set("limit", exp.Limit(expression=s.num(n)))
    return q


def final_select(op: Op, prev: str) -> exp.Select:
    """The answer: the user's columns in their order (the overflow witness last, its rows
    first), ordered (default_order)."""
    cols = [s.col(n) for n in op.names()] + ([s.col(OV)] if op.overflow else [])
    q = s.from_(s.select(*cols), prev)
    order = ([s.ordered(s.col(OV))] if op.overflow else []) + default_order(op)
    q.set("order", exp.Order(expressions=order))
    return q
