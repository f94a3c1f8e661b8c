"""A parsed query (query.Pipeline) bound against its table: the logical plan (ir.py),
every name resolved and every type known, or a QueryError pointing at the fault.

The plan is the query over every row: a Scan, then one operator per pipe stage in the
order written. Where it runs (edges, collector) is split.py's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pxo.collector import query
from pxo.collector.errors import QueryError
from pxo.collector.plan.aggregates import AGGREGATIONS
from pxo.collector.plan.bind_expr import ExprBinder, aggregate_calls, refs_outside_aggregates
from pxo.collector.plan.ir import (
    NODE,
    Agg,
    Aggregate,
    Column,
    Distinct,
    Expr,
    Field,
    Filter,
    Limit,
    Op,
    Project,
    Scan,
    Site,
    Sort,
    SortKey,
    Summary,
)
from pxo.collector.plan.types import STRING, Kind, of_column
from pxo.common.schema import Table

RANGES = (query.Last, query.Since, query.Between)
LOCAL = (query.Where, query.Project, query.ProjectAway, query.Extend)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Bound:
    plan: Op
    sites: tuple[Site, ...]


def bind(text: str, p: query.Pipeline, table: Table) -> Bound:
    rng = p.range_op
    first_global = next((i for i, op in enumerate(p.ops) if not isinstance(op, (*LOCAL, *RANGES))), None)
    if rng is not None and first_global is not None and p.ops.index(rng) > first_global:
        raise QueryError.at(text, rng.pos, "the time range ('last', 'since', 'between') must come before "
                                           "summarize, sort, take, top and distinct")
    columns = (Field(NODE, STRING), *[Field(c.name, of_column(c.type)) for c in table.columns if c.name != NODE])
    b = _Binder(text)
    op: Op = Scan(table.name, columns, ranged=rng is not None)
    for o in p.ops:
        if not isinstance(o, RANGES):
            op = b.operator(o, op)
    return Bound(op, tuple(b.sites))


class _Binder:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sites: list[Site] = []

    def error(self, message: str, pos: int | None, hint: str = "") -> QueryError:
        return QueryError.at(self.text, pos, message, hint)

    def exprs(self, below: Op, pos: int) -> ExprBinder:
        return ExprBinder(self.text, below.fields, self.sites, pos)

    def new_name(self, name: str, pos: int) -> str:
        if not _NAME.fullmatch(name) or name.startswith("__"):
            raise self.error(f"{name!r} cannot be a column name (names start with a letter and are not "
                             "reserved)", pos)
        return name

    def unique(self, names: list[tuple[str, int]]) -> None:
        seen: set[str] = set()
        for name, pos in names:
            if name.lower() in seen:
                raise self.error(f"the column name {name!r} is used twice; name it: other = ...", pos)
            seen.add(name.lower())

    def operator(self, o: query.Op, below: Op) -> Op:
        if isinstance(o, query.Where):
            pred = self.exprs(below, o.pos)(o.predicate)
            if pred.type.kind not in (Kind.BOOL, Kind.NULL):
                raise self.error(f"where takes a condition (true or false), not {pred.type}", o.pos)
            return Filter(below, pred)
        if isinstance(o, query.Project):
            return self.project(o, below)
        if isinstance(o, query.ProjectAway):
            b = self.exprs(below, o.pos)
            drop = {b.resolve(c.name, c.pos).name for c in o.names}
            kept = tuple((f.name, Column(f.name, f.type)) for f in below.fields if f.name not in drop)
            if not kept:
                raise self.error("project-away would leave no column", o.pos)
            return Project(below, kept)
        if isinstance(o, query.Extend):
            return self.extend(o, below)
        if isinstance(o, query.Summarize):
            return Aggregate(below, self.summarize(o, below))
        if isinstance(o, query.Distinct):
            b = self.exprs(below, o.pos)
            names = [b.resolve(c.name, c.pos).name for c in o.names] if o.names else below.names()
            return Distinct(below, tuple(names))
        if isinstance(o, query.Sort):
            b = self.exprs(below, o.pos)
            return Sort(below, tuple(SortKey(b(k.expr), k.desc) for k in o.keys))
        if isinstance(o, query.Top):
            return Sort(below, (SortKey(self.exprs(below, o.pos)(o.key.expr), o.key.desc),), o.count)
        assert isinstance(o, query.Take), o
        return Limit(below, o.count)

    def project(self, o: query.Project, below: Op) -> Op:
        b = self.exprs(below, o.pos)
        items: list[tuple[str, Expr, int]] = []
        for it in o.items:
            if it.name is None and not isinstance(it.expr, query.Col):
                raise self.error("name this column: project name = expression", it.pos)
            e = b(it.expr)
            name = e.name if it.name is None and isinstance(e, Column) else self.new_name(it.name or "", it.pos)
            items.append((name, e, it.pos))
        self.unique([(n, p) for n, _, p in items])
        return Project(below, tuple((n, e) for n, e, _ in items))

    def extend(self, o: query.Extend, below: Op) -> Op:
        """New columns go last; a column extended again keeps its place (and its new value).
        Every expression sees the columns as they were before this extend."""
        b = self.exprs(below, o.pos)
        self.unique([(it.name or "", it.pos) for it in o.items])
        items: dict[str, Expr] = {f.name: Column(f.name, f.type) for f in below.fields}
        for it in o.items:
            name = self.new_name(it.name or "", it.pos)
            e = b(it.expr)
            existing = next((n for n in items if n.lower() == name.lower()), None)
            items[existing if existing is not None else name] = e
        return Project(below, tuple(items.items()))

    def summarize(self, o: query.Summarize, below: Op) -> Summary:
        b = self.exprs(below, o.pos)
        keys: list[tuple[str, Expr, int]] = []
        for i, it in enumerate(o.keys):
            if aggregate_calls(it.expr):
                raise self.error("a 'by' key cannot be an aggregation", it.pos)
            e = b(it.expr)
            if it.name is None and isinstance(e, Column):
                name = e.name
            else:
                name = it.name or default_name(it.expr) or f"key{i + 1}"
            keys.append((self.new_name(name, it.pos), e, it.pos))
        aggs: list[Agg] = []
        outputs: list[tuple[str, Expr, int]] = []
        over = ExprBinder(self.text, below.fields, self.sites, o.pos, aggs)
        for it in o.aggs:
            if not aggregate_calls(it.expr):
                raise self.error("expected an aggregation such as count(), sum(x), avg(x)", it.pos)
            for col in refs_outside_aggregates(it.expr):
                raise self.error(f"column {col.name!r} must be inside an aggregation, e.g. max({col.name}), "
                                 "or among the 'by' keys", col.pos)
            e = over(it.expr)
            name = it.name or default_name(it.expr) or f"agg{len(outputs) + 1}"
            outputs.append((self.new_name(name, it.pos), e, it.pos))
        self.unique([(n, p) for n, _, p in keys] + [(n, p) for n, _, p in outputs])
        return Summary(tuple((n, e) for n, e, _ in keys), tuple(aggs), tuple((n, e) for n, e, _ in outputs))


def default_name(e: query.Expr) -> str | None:
    """The name of an unnamed column: a column's own; bin(x, ...) is x; an aggregation
    count_, sum_x, p90_x, percentile_x_95, ..."""
    if isinstance(e, query.Col):
        return e.name
    if isinstance(e, query.Call):
        first = e.args[0] if e.args else None
        if e.name == "bin" and isinstance(first, query.Col):
            return first.name
        if e.name in AGGREGATIONS:
            if first is None:
                return f"{e.name}_"
            if isinstance(first, query.Col):
                if e.name in ("percentile", "percentile_exact") and isinstance(e.args[1], query.Lit):
                    return f"{e.name}_{first.name}_{str(e.args[1].value).replace('.', '_')}"
                return f"{e.name}_{first.name}"
    return None
