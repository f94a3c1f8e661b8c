"""The logical plan: typed expressions and operators, bound once against the catalog
(binder.py), rewritten by small rules (rules/), split into an edge part and a collector
part (split.py) and rendered to SQL at the very end (render.py).

A query is a chain of operators, each reading the one below it; the leaf reads a table
(Scan, at an edge or in one database) or the nodes' merged partial answers (Gather, at
the collector). Each operator knows its columns and their types (``fields``), whether
its rows carry the order of a sort (``ordered``: a hidden row-number column), and
whether they carry an integer overflow's witness (``overflow``: a hidden column naming
the first expression that overflowed, see render_expr.py).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from pxo.collector.plan.types import Type

NODE = "node"
INTERNAL = "__pxo_"
ORD = INTERNAL + "o"  # the row number of a sort
OV = INTERNAL + "ov"  # the first integer overflow in the row (a site number), or NULL

# -- expressions ----------------------------------------------------------------

Value = None | bool | int | float | str | dt.datetime  # a duration is an int of microseconds


@dataclass(frozen=True)
class Column:
    name: str
    type: Type


@dataclass(frozen=True)
class Const:
    value: Value
    type: Type


@dataclass(frozen=True)
class Call:
    """A scalar operator or function (the names are functions.py's)."""

    fn: str
    args: tuple[Expr, ...]
    type: Type
    site: int | None = None  # an int result that may overflow: Plan.sites[site] names it


@dataclass(frozen=True)
class AggRef:
    """The finished value of a summarize's ``aggs[index]``."""

    index: int
    type: Type


Expr = Column | Const | Call | AggRef


def children(e: Expr) -> tuple[Expr, ...]:
    return e.args if isinstance(e, Call) else ()


def walk(e: Expr) -> Iterator[Expr]:
    """``e`` and everything inside it, children before their parent."""
    for c in children(e):
        yield from walk(c)
    yield e


def reads(e: Expr) -> set[str]:
    return {x.name for x in walk(e) if isinstance(x, Column)}


def checked(e: Expr) -> list[Call]:
    """The calls in ``e`` whose int result may overflow, innermost first."""
    return [x for x in walk(e) if isinstance(x, Call) and x.site is not None]


@dataclass(frozen=True)
class Site:
    """An expression whose int result may overflow: an overflow names it."""

    text: str
    pos: int


@dataclass(frozen=True)
class Agg:
    """One aggregate call of a summarize (aggregates.py defines each)."""

    fn: str
    args: tuple[Expr, ...]
    type: Type
    q: float | None = None  # a percentile's quantile, 0..1


@dataclass(frozen=True)
class Summary:
    """What a summarize computes: keys, aggregate calls, and the outputs over them."""

    keys: tuple[tuple[str, Expr], ...]
    aggs: tuple[Agg, ...]
    outputs: tuple[tuple[str, Expr], ...]  # expressions over AggRef

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(Field(n, e.type) for n, e in (*self.keys, *self.outputs))

    def exprs(self) -> list[Expr]:
        """What the summarize evaluates per row: keys and aggregate arguments."""
        return [e for _, e in self.keys] + [a for agg in self.aggs for a in agg.args]


@dataclass(frozen=True)
class SortKey:
    expr: Expr
    desc: bool


@dataclass(frozen=True)
class Field:
    name: str
    type: Type


# -- operators -------------------------------------------------------------------


class _Op:
    """What every operator tells about its rows."""

    keeps_order: ClassVar[bool] = True  # its rows keep the order its input's rows have

    @property
    def input(self) -> Op | None:
        return None

    @property
    def fields(self) -> tuple[Field, ...]:
        assert self.input is not None
        return self.input.fields

    @property
    def ordered(self) -> bool:
        return self.keeps_order and self.input is not None and self.input.ordered

    def exprs(self) -> list[Expr]:
        """The expressions it evaluates on each input row."""
        return []

    @functools.cached_property
    def overflow(self) -> bool:
        below = self.input.overflow if self.input is not None else False
        return below or any(checked(e) for e in self.exprs())

    def names(self) -> list[str]:
        return [f.name for f in self.fields]


@dataclass(frozen=True)
class Scan(_Op):
    """A table's rows: in one database, or at an edge (``at_edge``: the node column is
    that edge's name, bound when its SQL is rendered). ``ranged``: the rows of the query's
    time range, bound as $start and $end."""

    table: str
    columns: tuple[Field, ...]  # node first
    ranged: bool
    at_edge: bool = False

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.columns


@dataclass(frozen=True)
class Gather(_Op):
    """At the collector: every node's partial answer, merged (the merge table)."""

    table: str
    columns: tuple[Field, ...]
    carries_overflow: bool = False

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.columns

    @functools.cached_property
    def overflow(self) -> bool:
        return self.carries_overflow


@dataclass(frozen=True)
class _Above(_Op):
    """An operator over the rows of another (its source)."""

    source: Op

    @property
    def input(self) -> Op:
        return self.source


@dataclass(frozen=True)
class Filter(_Above):
    predicate: Expr

    def exprs(self) -> list[Expr]:
        return [self.predicate]


@dataclass(frozen=True)
class Project(_Above):
    """project, project-away and extend: these columns, in this order."""

    items: tuple[tuple[str, Expr], ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        return tuple(Field(n, e.type) for n, e in self.items)

    def exprs(self) -> list[Expr]:
        return [e for _, e in self.items]


@dataclass(frozen=True)
class Aggregate(_Above):
    """summarize over every row (one database, or the collector after the split)."""

    summary: Summary
    keeps_order: ClassVar[bool] = False

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.summary.fields

    def exprs(self) -> list[Expr]:
        return self.summary.exprs() + [e for _, e in self.summary.outputs]


@dataclass(frozen=True)
class Distinct(_Above):
    columns: tuple[str, ...]
    keeps_order: ClassVar[bool] = False

    @property
    def fields(self) -> tuple[Field, ...]:
        by = {f.name: f for f in self.source.fields}
        return tuple(by[c] for c in self.columns)


@dataclass(frozen=True)
class Sort(_Above):
    """sort (and top: the first ``limit`` rows): numbers the rows in the total order."""

    keys: tuple[SortKey, ...]
    limit: int | None = None

    @property
    def ordered(self) -> bool:
        return True

    def exprs(self) -> list[Expr]:
        return [k.expr for k in self.keys]


@dataclass(frozen=True)
class Limit(_Above):
    """take: after a sort its first rows, otherwise the newest."""

    count: int


@dataclass(frozen=True)
class PartialAggregate(_Above):
    """An edge's share of a summarize: per group (and distinct value or sketch bucket of
    the holistic aggregates' arguments) the partial columns aggregates.py defines."""

    summary: Summary
    columns: tuple[Field, ...]
    keeps_order: ClassVar[bool] = False

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.columns

    def exprs(self) -> list[Expr]:
        return self.summary.exprs()


@dataclass(frozen=True)
class FinalAggregate(_Above):
    """The collector's half of a summarize (over a Gather): merges the partials and
    finishes them."""

    summary: Summary
    keeps_order: ClassVar[bool] = False

    @property
    def fields(self) -> tuple[Field, ...]:
        return self.summary.fields

    def exprs(self) -> list[Expr]:
        return [e for _, e in self.summary.outputs]


@dataclass(frozen=True)
class TopN(_Above):
    """An edge's share of a top N: a superset of its own first ``count`` rows in the
    query's total order (rules/topn.py)."""

    keys: tuple[SortKey, ...]
    count: int

    def exprs(self) -> list[Expr]:
        return [k.expr for k in self.keys]


Op = Scan | Gather | Filter | Project | Aggregate | Distinct | Sort | Limit | PartialAggregate | FinalAggregate | TopN
ROW_LOCAL = (Filter, Project)


def chain(op: Op) -> list[Op]:
    """The operators from the leaf up to ``op``."""
    out: list[Op] = []
    cur: Op | None = op
    while cur is not None:
        out.append(cur)
        cur = cur.input
    return out[::-1]
