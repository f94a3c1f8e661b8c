"""Bound expressions as SQL trees.

Integer arithmetic (+ - * and unary -, abs, bin of ints, and an UBIGINT or 128-bit value
taken as a 64-bit int) is computed exactly in 128 bits and its result checked against
the signed 64-bit range: in range it is a BIGINT, beyond it NULL (TRY_CAST). An edge must not fail
on an overflow (that would be one node's failure and a partial answer): instead, each
row carries a hidden column (ir.OV) holding the number of the first expression that
overflowed in it (its *witness*, ``witness``), rows with one are kept through filters and
cuts, and the collector fails the query naming that expression (Plan.check_overflow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlglot import exp

from pxo.collector.plan import sql as s
from pxo.collector.plan.ir import OV, AggRef, Call, Column, Const, Expr, checked
from pxo.collector.plan.types import INT_MAX, INT_MIN, Kind

_CMP: dict[str, type[exp.Expr]] = {"==": exp.EQ, "!=": exp.NEQ, "<": exp.LT, "<=": exp.LTE, ">": exp.GT,
                                   ">=": exp.GTE}
_ARITH: dict[str, type[exp.Expr]] = {"+": exp.Add, "-": exp.Sub, "*": exp.Mul}
EPOCH = "1970-01-01 00:00:00"


class Renderer:
    """Renders expressions over a relation whose columns ``column`` names (plain quoted
    names by default) and whose aggregate results ``agg`` gives (in a summarize)."""

    def __init__(self, *, column: Callable[[str], s.Sql] = s.col,
                 agg: Callable[[int], s.Sql] | None = None) -> None:
        self.column = column
        self.agg = agg

    def __call__(self, e: Expr) -> s.Sql:
        if isinstance(e, Column):
            return self.column(e.name)
        if isinstance(e, Const):
            return const(e)
        if isinstance(e, AggRef):
            assert self.agg is not None
            return self.agg(e.index)
        if e.site is not None:  # NULL beyond the range (the row's witness names it)
            return exp.TryCast(this=self._raw(e), to=s.cast(exp.Null(), "BIGINT").to)
        return self._call(e)

    def value(self, e: Expr) -> s.Sql:
        """``e`` as a column of a SELECT: of exactly its declared type."""
        return s.cast(const(e), e.type.sql) if isinstance(e, Const) and e.value is not None else self(e)

    def witness(self, e: Call) -> s.Sql:
        """Its site number when ``e`` overflows in this row, else NULL."""
        out_of_range = exp.Not(this=exp.Between(this=self._raw(e), low=s.num(INT_MIN), high=s.num(INT_MAX)))
        return s.case((out_of_range, s.num(e.site or 0)))

    def overflow(self, exprs: Iterable[Expr], below: bool) -> s.Sql | None:
        """The row's ov column after evaluating ``exprs`` (``below``: the input has one)."""
        parts = ([s.col(OV)] if below else []) + [self.witness(c) for e in exprs for c in checked(e)]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else s.fn("coalesce", *parts)

    def _hugeint(self, e: Expr) -> s.Sql:
        return s.cast(self(e), "HUGEINT")

    def _raw(self, e: Call) -> s.Sql:
        """The exact 128-bit value of a checked call."""
        a = e.args
        if e.fn == "to_int":
            return self(a[0])
        if e.fn in _ARITH:
            return s.paren(_ARITH[e.fn](this=self._hugeint(a[0]), expression=self._hugeint(a[1])))
        if e.fn == "neg":
            return s.paren(exp.Neg(this=self._hugeint(a[0])))
        if e.fn == "abs":
            return s.fn("abs", self._hugeint(a[0]))
        assert e.fn == "bin_int", e.fn  # x - ((x % w) + w) % w: rounds down, negative x too
        x, w = self._hugeint(a[0]), self(a[1])
        inner = exp.Mod(this=s.paren(exp.Add(this=s.paren(exp.Mod(this=x, expression=w)), expression=w.copy())),
                        expression=w.copy())
        return s.paren(exp.Sub(this=x.copy(), expression=s.paren(inner)))

    def _double(self, e: Expr) -> s.Sql:
        return s.cast(self(e), "DOUBLE")

    def _call(self, e: Call) -> s.Sql:
        fn, a = e.fn, e.args
        if fn in _CMP:
            return s.paren(_CMP[fn](this=self(a[0]), expression=self(a[1])))
        if fn in _ARITH or fn in ("div", "mod", "neg"):
            return self._arithmetic(e)
        if fn in ("and", "or"):
            return s.paren((exp.And if fn == "and" else exp.Or)(this=self(a[0]), expression=self(a[1])))
        if fn == "not":
            return s.paren(exp.Not(this=self(a[0])))
        if fn == "isnull":
            return s.paren(s.is_null(self(a[0])))
        if fn == "isnotnull":
            return s.paren(s.not_null(self(a[0])))
        if fn in ("in", "!in"):
            member = s.paren(exp.In(this=self(a[0]), expressions=[self(i) for i in a[1:]]))
            return s.paren(exp.Not(this=member)) if fn == "!in" else member
        if fn == "regex":
            return s.fn("regexp_matches", self(a[0]), self(a[1]))
        if fn in ("contains", "!contains"):
            test = s.fn("contains", s.fn("lower", self(a[0])), s.fn("lower", self(a[1])))
            return s.paren(exp.Not(this=test)) if fn == "!contains" else test
        if fn in ("lower", "upper"):
            return s.fn(fn, self(a[0]))
        if fn == "strlen":
            return s.fn("length", self(a[0]))
        if fn == "strcat":
            return s.fn("concat", *[self(x) if x.type.kind is Kind.STRING else s.cast(self(x), "VARCHAR") for x in a])
        if fn == "tostring":
            return s.cast(self(a[0]), "VARCHAR")
        if fn in ("floor", "ceil", "sqrt"):
            return s.fn(fn, self._double(a[0]))
        if fn == "round":
            return s.fn("round", self._double(a[0]), self(a[1]))
        if fn == "abs":
            return s.fn("abs", self._double(a[0]))
        if fn == "coalesce":
            return s.fn("coalesce", *[self(x) if x.type == e.type else s.cast(self(x), e.type.sql) for x in a])
        if fn == "format_bytes":
            return s.fn("format_bytes", self(a[0]))
        if fn == "bin_time":  # buckets start at the Unix epoch: every node cuts time the same way
            return s.fn("time_bucket", self(a[1]), self(a[0]), s.cast(s.string(EPOCH), "TIMESTAMP"))
        if fn == "bin_float":
            w = self._double(a[1])
            return s.paren(exp.Mul(this=s.fn("floor", exp.Div(this=self._double(a[0]), expression=w)),
                                   expression=w.copy()))
        raise AssertionError(f"no SQL for {fn}")

    def _arithmetic(self, e: Call) -> s.Sql:
        fn, a = e.fn, e.args
        if fn == "div":
            return s.paren(exp.Div(this=self._double(a[0]), expression=self._double(a[1])))
        if e.type.kind is Kind.FLOAT:
            d = [self._double(v) for v in a]
            if fn == "neg":
                return s.paren(exp.Neg(this=d[0]))
            return s.paren((exp.Mod if fn == "mod" else _ARITH[fn])(this=d[0], expression=d[1]))
        if fn == "mod":  # x % 0 is null; the sign is the dividend's
            x, y = s.cast(self(a[0]), "BIGINT"), s.cast(self(a[1]), "BIGINT")
            return s.case((exp.NEQ(this=y, expression=s.num(0)), exp.Mod(this=x, expression=y.copy())))
        if fn == "neg":
            return s.paren(exp.Neg(this=self(a[0])))
        return s.paren(_ARITH[fn](this=self(a[0]), expression=self(a[1])))  # times and durations


def const(e: Const) -> s.Sql:
    v, kind = e.value, e.type.kind
    if v is None:
        return s.null(e.type.sql)
    if isinstance(v, bool):
        return exp.Boolean(this=v)
    if kind is Kind.DURATION:
        assert isinstance(v, int)
        return s.fn("to_microseconds", s.num(v))
    if isinstance(v, int | float):
        return s.num(v)
    if isinstance(v, str):
        return s.string(v)
    return s.timestamp(v)
