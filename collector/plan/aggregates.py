"""Every aggregation of `summarize`, each defined once: what it takes and gives, its form
over every row (one database, or the collector after the split), the partial answer an
edge ships, how the collector merges and finishes the partials, and whether the answer
is approximate (docs/query-language.md "Aggregations").

Holistic aggregations (dcount, percentiles) cannot be merged from a number per group:
their partial rows are per group *and* distinct value of the argument (a sketch bucket,
for the approximate percentiles), with the count of rows as a weight (``WEIGHT``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlglot import exp

from pxo.collector.plan import sketch
from pxo.collector.plan import sql as s
from pxo.collector.plan.ir import Agg, Summary
from pxo.collector.plan.types import FLOAT, INT, Kind, Type, sum_type

WEIGHT = "__pxo_w"  # the rows behind a holistic partial row


class Merge(Protocol):
    """The collector's merged partial answers, as an aggregation's finish sees them."""

    def part(self, suffix: str = "") -> s.Sql:
        """This aggregation's merged partial column (``a{index}{suffix}``)."""

    def holistic(self) -> s.Sql:
        """The merged column of the value (or bucket) this aggregation's partials hold."""

    def simple(self, value: s.Sql) -> s.Sql:
        """``value``, an aggregate over a group's merged rows: its finished column."""

    def windowed(self, build: Callable[[list[str], str, Callable[[str], str]], list[tuple[str, exp.Select]]]
                 ) -> s.Sql:
        """A finish that needs queries of its own: ``build(keys, merged, cte)`` gives them in
        order as (name suffix, SELECT of the key columns and, in the last, ``v``), where
        ``cte(suffix)`` names an earlier one; returns the last one's v for the group."""


@dataclass(frozen=True)
class Aggregation:
    name: str
    arity: tuple[int, int]
    takes: str  # what its first argument must be, for errors: "a number", "any value", ...
    approximate: bool = False
    holistic: str = ""  # "value" or "bucket": what its partial rows are grouped by
    quantile: bool = False
    accepts: Callable[[Type], bool] = field(default=lambda t: True)

    def result(self, args: list[Type]) -> Type:
        raise NotImplementedError

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        raise NotImplementedError

    def parts(self, a: Agg) -> list[tuple[str, Type]]:
        """Its partial columns at an edge (suffix, type); [] for the holistic ones."""
        return [("", self.result([t.type for t in a.args]))]

    def partial(self, a: Agg, x: list[s.Sql]) -> list[s.Sql]:
        """The SQL of its partial columns over an edge's rows (``x``: its arguments)."""
        return [self.single(a, x)] if self.parts(a) else []

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        raise NotImplementedError


def _numbers(t: Type) -> bool:
    return t.numeric or t.kind is Kind.NULL


class _Count(Aggregation):
    def result(self, args: list[Type]) -> Type:
        return INT

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        if self.name == "countif":
            return exp.Count(this=s.case((x[0], s.num(1))))
        return exp.Count(this=x[0] if x else exp.Star())

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        return m.simple(s.cast(s.fn("coalesce", s.fn("sum", m.part()), s.num(0)), "BIGINT"))


class _Sum(Aggregation):
    def result(self, args: list[Type]) -> Type:
        return sum_type(args[0])

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        return s.fn("sum", x[0])

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        return m.simple(s.fn("sum", m.part()))


class _MinMax(Aggregation):
    def result(self, args: list[Type]) -> Type:
        return args[0]

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        return s.fn(self.name, x[0])

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        return m.simple(s.fn(self.name, m.part()))


class _Avg(Aggregation):
    """Each edge ships its sum and count; the collector divides the totals."""

    def result(self, args: list[Type]) -> Type:
        return FLOAT

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        return s.fn("avg", x[0])

    def parts(self, a: Agg) -> list[tuple[str, Type]]:
        return [("s", sum_type(a.args[0].type)), ("c", INT)]

    def partial(self, a: Agg, x: list[s.Sql]) -> list[s.Sql]:
        return [s.fn("sum", x[0]), exp.Count(this=x[0].copy())]

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        total = s.cast(s.fn("sum", m.part("s")), "DOUBLE")
        return m.simple(exp.Div(this=total, expression=s.fn("nullif", s.fn("sum", m.part("c")), s.num(0))))


class _Dcount(Aggregation):
    """Each edge ships its distinct values; the collector counts them."""

    def result(self, args: list[Type]) -> Type:
        return INT

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        return exp.Count(this=exp.Distinct(expressions=[x[0]]))

    def parts(self, a: Agg) -> list[tuple[str, Type]]:
        return []

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        return m.simple(exp.Count(this=exp.Distinct(expressions=[m.holistic()])))


class _Stdev(Aggregation):
    """The sample standard deviation (null for fewer than two values). Each edge ships
    count, mean and the sum of squared deviations of its values; the collector combines
    them with Chan et al.'s parallel formula: n = sum n_i, mean = sum n_i m_i / n,
    M2 = sum M2_i + n_i (m_i - mean)^2."""

    def result(self, args: list[Type]) -> Type:
        return FLOAT

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        return s.fn("stddev_samp", x[0])

    def parts(self, a: Agg) -> list[tuple[str, Type]]:
        return [("n", INT), ("m", FLOAT), ("q", FLOAT)]

    def partial(self, a: Agg, x: list[s.Sql]) -> list[s.Sql]:
        d = s.cast(x[0], "DOUBLE")
        return [exp.Count(this=d.copy()), s.fn("avg", d.copy()),
                exp.Mul(this=s.fn("var_pop", d.copy()), expression=exp.Count(this=d.copy()))]

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        ni, mi, qi = m.part("n"), m.part("m"), m.part("q")

        def build(keys: list[str], merged: str, cte: Callable[[str], str]) -> list[tuple[str, exp.Select]]:
            def over(f: s.Sql) -> s.Sql:
                return s.window(f, partition=[s.col(k) for k in keys])
            h = s.select(*[s.col(k) for k in keys], ("ni", ni), ("mi", mi), ("qi", qi),
                         ("n", over(s.fn("sum", ni.copy()))),
                         ("mean", exp.Div(this=over(s.fn("sum", exp.Mul(this=ni.copy(), expression=mi.copy()))),
                                          expression=over(s.fn("sum", ni.copy())))))
            h = s.from_(h, merged).where(exp.GT(this=ni.copy(), expression=s.num(0)), copy=False)
            dev = exp.Sub(this=s.col("mi"), expression=s.col("mean"))
            m2 = exp.Add(this=s.fn("sum", s.col("qi")),
                         expression=s.fn("sum", exp.Mul(this=exp.Mul(this=s.col("ni"), expression=s.paren(dev)),
                                                        expression=s.paren(dev.copy()))))
            n = s.fn("max", s.col("n"))
            v = s.case((exp.GT(this=n, expression=s.num(1)),
                        s.fn("sqrt", exp.Div(this=s.fn("greatest", m2, s.num(0)),
                                             expression=s.paren(exp.Sub(this=n.copy(), expression=s.num(1)))))))
            return [("h", h), ("", _grouped(s.from_(s.select(*[s.col(k) for k in keys], ("v", v)), cte("h")), keys))]
        return m.windowed(build)


class _Percentile(Aggregation):
    """The value at a rank (DuckDB's quantile_disc: of n values sorted ascending, the
    one at 0-based index max(1, n - floor(n - q n)) - 1). Each edge ships per group its
    distinct values (exact) or sketch buckets (approximate) with their counts; the
    collector adds the counts and picks the value (bucket) at that rank."""

    def result(self, args: list[Type]) -> Type:
        return FLOAT if self.approximate else args[0]

    def single(self, a: Agg, x: list[s.Sql]) -> s.Sql:
        value = s.fn("quantile_disc", x[0], s.num(float(a.q or 0.0)))
        return s.cast(value, "DOUBLE") if self.approximate else value

    def parts(self, a: Agg) -> list[tuple[str, Type]]:
        return []

    def finish(self, a: Agg, m: Merge) -> s.Sql:
        h = m.holistic()
        q = s.num(float(a.q or 0.0))

        def build(keys: list[str], merged: str, cte: Callable[[str], str]) -> list[tuple[str, exp.Select]]:
            def by() -> list[s.Sql]:
                return [s.col(k) for k in keys]
            hist = s.from_(s.select(*by(), ("v", h), ("w", s.fn("sum", s.col(WEIGHT)))), merged)
            hist = hist.where(s.not_null(h.copy()), copy=False)
            hist.set("group", exp.Group(expressions=[*by(), h.copy()]))
            cum = s.window(s.fn("sum", s.col("w")), partition=by(), order=[s.ordered(s.col("v"))], running=True)
            ranked = s.from_(s.select(*by(), s.col("v"), ("cum", cum),
                                      ("n", s.window(s.fn("sum", s.col("w")), partition=by()))), s.subquery(hist))
            n = s.cast(s.col("n"), "DOUBLE")
            rank = exp.Sub(this=s.fn("greatest", s.num(1), exp.Sub(this=n, expression=s.fn("floor", exp.Sub(
                this=n.copy(), expression=exp.Mul(this=q, expression=n.copy()))))),
                expression=s.num(1))
            pick = s.from_(s.select(*by(), ("v", s.fn("min", s.col("v")))), cte("h"))
            pick = pick.where(exp.GT(this=s.col("cum"), expression=rank), copy=False)
            return [("h", ranked), ("", _grouped(pick, keys))]
        value = m.windowed(build)
        return sketch.representative(value) if self.approximate else value


def _grouped(q: exp.Select, keys: list[str]) -> exp.Select:
    if keys:
        q.set("group", exp.Group(expressions=[s.col(k) for k in keys]))
    return q


AGGREGATIONS: dict[str, Aggregation] = {a.name: a for a in [
    _Count("count", (0, 1), "any value"),
    _Count("countif", (1, 1), "a condition", accepts=lambda t: t.kind in (Kind.BOOL, Kind.NULL)),
    _Sum("sum", (1, 1), "a number", accepts=_numbers),
    _MinMax("min", (1, 1), "any value"),
    _MinMax("max", (1, 1), "any value"),
    _Avg("avg", (1, 1), "a number", accepts=_numbers),
    _Dcount("dcount", (1, 1), "any value", holistic="value"),
    _Stdev("stdev", (1, 1), "a number", accepts=_numbers),
    _Percentile("percentile_exact", (2, 2), "any ordered value", holistic="value", quantile=True),
    *[_Percentile(n, (2, 2) if n == "percentile" else (1, 1), "a number", approximate=True, holistic="bucket",
                  quantile=True, accepts=_numbers) for n in ("percentile", "p50", "p90", "p95", "p99")],
]}
RELATIVE_ERROR = sketch.RELATIVE_ERROR


def holistic_key(a: Agg) -> tuple[str, object] | None:
    """What this call's partial rows are grouped by (equal for calls that can share it)."""
    kind = AGGREGATIONS[a.fn].holistic
    if not kind:
        return None
    x = a.args[0]
    return (kind if kind == "value" else f"bucket:{x.type.sql}", x)


def holistic_columns(summary: Summary) -> list[tuple[object, int]]:
    """The distinct holistic keys of a summary (the partial's h columns, in order) and
    the first aggregation using each."""
    out: dict[object, int] = {}
    for i, a in enumerate(summary.aggs):
        key = holistic_key(a)
        if key is not None and key not in out:
            out[key] = i
    return list(out.items())


def holistic_sql(a: Agg, x: s.Sql) -> s.Sql:
    """The SQL of what this call's partial rows are grouped by, its argument being ``x``."""
    if AGGREGATIONS[a.fn].holistic == "bucket":
        return sketch.bucket(x, a.args[0].type)
    return x


def holistic_type(a: Agg) -> Type:
    return INT if AGGREGATIONS[a.fn].holistic == "bucket" else a.args[0].type


