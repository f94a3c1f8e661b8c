"""Expressions of the parse tree (query.py) bound over a relation's columns: names
resolved, types checked (functions.py), aggregate calls collected in a summarize.
Errors point at the column, function or literal at fault; type errors at the operator
(docs/query-language.md "Errors")."""

from __future__ import annotations

import difflib

import duckdb

from pxo.collector import query
from pxo.collector.errors import QueryError
from pxo.collector.plan import functions
from pxo.collector.plan.aggregates import AGGREGATIONS
from pxo.collector.plan.ir import Agg, AggRef, Column, Const, Expr, Field, Site
from pxo.collector.plan.types import BOOL, DURATION, FLOAT, INT, INT_MAX, INT_MIN, NULL, STRING, TIME, Kind
from pxo.collector.scratch import scratch

_LITERALS = {"float": FLOAT, "str": STRING, "bool": BOOL, "null": NULL, "duration": DURATION, "time": TIME}
SKETCH_HINT = "percentile_exact(x, q) takes any ordered value, exactly"


def columns_hint(name: str, cols: list[str]) -> str:
    close = difflib.get_close_matches(name, cols, n=1) or difflib.get_close_matches(
        name.lower(), [c.lower() for c in cols], n=1)
    listed = ", ".join(cols) if len(cols) <= 40 else ", ".join(cols[:40]) + ", ..."
    return (f"did you mean {close[0]}? " if close else "") + "columns: " + listed


def hint_list(name: str, choices: list[str], what: str) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return (f"did you mean {close[0]}? " if close else "") + f"{what}: " + ", ".join(choices)


def arity(lo: int, hi: int) -> str:
    if lo == hi:
        return f"{lo} argument{'s' if lo != 1 else ''}"
    return f"{lo} to {hi} arguments"


class ExprBinder:
    """Binds expressions over ``fields`` for the operator at ``op_pos`` of ``text``. With
    ``aggs`` (a summarize's outputs), aggregate calls are allowed and collected there."""

    def __init__(self, text: str, fields: tuple[Field, ...], sites: list[Site], op_pos: int,
                 aggs: list[Agg] | None = None) -> None:
        self.text, self.fields, self.sites, self.op_pos, self.aggs = text, fields, sites, op_pos, aggs
        self._node: query.Expr | None = None

    def error(self, message: str, pos: int | None, hint: str = "") -> QueryError:
        return QueryError.at(self.text, pos, message, hint)

    # functions.Binding
    def site(self) -> int:
        assert self._node is not None
        self.sites.append(Site(query.unparse(self._node), self._node.pos))
        return len(self.sites) - 1

    def fail(self, message: str, *, at_call: bool = False) -> QueryError:
        return self.error(message, self._node.pos if at_call and self._node is not None else self.op_pos)

    def resolve(self, name: str, pos: int) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        for f in self.fields:
            if f.name.lower() == name.lower():
                return f
        raise self.error(f"unknown column {name!r}", pos, columns_hint(name, [f.name for f in self.fields]))

    def __call__(self, e: query.Expr, *, in_agg: bool = False) -> Expr:
        outer, self._node = self._node, e
        try:
            return self._bind(e, in_agg)
        finally:
            self._node = outer

    def _bind(self, e: query.Expr, in_agg: bool) -> Expr:
        if isinstance(e, query.Lit):
            return self._literal(e)
        if isinstance(e, query.Col):
            f = self.resolve(e.name, e.pos)
            return Column(f.name, f.type)
        if isinstance(e, query.Unary):
            if e.op == "not":
                return functions.logic("not", (self(e.operand, in_agg=in_agg),), self)
            if isinstance(e.operand, query.Lit) and e.operand.kind == "int":  # -9223372036854775808 fits
                return self._int(-int(e.operand.value), e.operand.pos)  # type: ignore[call-overload]
            return functions.negate(self(e.operand, in_agg=in_agg), self)
        if isinstance(e, query.InList):
            x = self(e.operand, in_agg=in_agg)
            items = tuple(self._meet(x, self(i, in_agg=in_agg)) for i in e.items)
            return functions.membership(e.negate, x, items, self)
        if isinstance(e, query.Binary):
            return self._binary(e, in_agg)
        return self._call(e, in_agg)

    def _int(self, value: int, pos: int) -> Const:
        if not INT_MIN <= value <= INT_MAX:
            raise self.error(f"{value} is beyond the range of an int (signed 64-bit)", pos)
        return Const(value, INT)

    def _literal(self, e: query.Lit) -> Const:
        if e.kind == "int":
            return self._int(int(e.value), e.pos)  # type: ignore[call-overload]
        return Const(e.value, _LITERALS[e.kind])  # type: ignore[arg-type]

    def _meet(self, other: Expr, x: Expr) -> Expr:
        """``x`` as compared with ``other``: the literal null takes other's type, and a quoted
        time compared with a time is a time (since "2026-11-24 08:00" reads so)."""
        if isinstance(x, Const) and x.type.kind is Kind.NULL:
            return Const(None, other.type)
        if other.type.kind is Kind.TIME and isinstance(x, Const) and isinstance(x.value, str):
            try:
                return Const(query.parse_time(x.value), TIME)
            except ValueError:
                raise self.error(f"{x.value!r} is not a time; write e.g. 2026-11-24T08:00:00Z",
                                 self._node.pos if self._node is not None else None) from None
        return x

    def _binary(self, e: query.Binary, in_agg: bool) -> Expr:
        op = e.op
        if op in ("==", "!=") and (_is_null(e.left) or _is_null(e.right)):
            return functions.null_test(op == "!=", self(e.right if _is_null(e.left) else e.left, in_agg=in_agg))
        left = self(e.left, in_agg=in_agg)
        if op == "=~":
            assert isinstance(e.right, query.Lit)
            _check_regex(self, str(e.right.value), e.right.pos)
            return functions.regex(left, Const(str(e.right.value), STRING), self)
        right = self(e.right, in_agg=in_agg)
        if op in ("and", "or"):
            return functions.logic(op, (left, right), self)
        if op in ("contains", "!contains"):
            return functions.contains(op, left, right, self)
        if op in ("==", "!=", "<", "<=", ">", ">="):
            return functions.compare(op, self._meet(right, left), self._meet(left, right), self)
        return functions.arithmetic(op, left, right, self)

    def _call(self, e: query.Call, in_agg: bool) -> Expr:
        if e.name in AGGREGATIONS:
            return self._aggregate(e, in_agg)
        scalar = functions.SCALARS.get(e.name)
        if scalar is None:
            raise self.error(f"unknown function {e.name}()", e.pos,
                             hint_list(e.name, sorted(set(functions.SCALARS) | set(AGGREGATIONS)), "functions"))
        lo, hi = scalar.arity
        if not lo <= len(e.args) <= hi:
            raise self.error(f"{e.name}() takes {arity(lo, hi)}", e.pos)
        args = tuple(self(a, in_agg=in_agg) for a in e.args)
        try:
            return scalar.bind(args, self)
        except functions.BinWidthError:
            raise self.error("bin(x, width) takes a positive number or a duration (e.g. 5m) as its width",
                             e.args[1].pos) from None

    def _aggregate(self, e: query.Call, in_agg: bool) -> Expr:
        agg = AGGREGATIONS[e.name]
        if self.aggs is None:
            raise self.error(f"{e.name}() is an aggregation: use it in summarize", e.pos)
        if in_agg:
            raise self.error(f"{e.name}() inside another aggregation", e.pos)
        lo, hi = agg.arity
        if not lo <= len(e.args) <= hi:
            raise self.error(f"{e.name}() takes {arity(lo, hi)}", e.pos)
        q = quantile(e, self) if agg.quantile else None
        args = tuple(self(a, in_agg=True) for a in e.args[:1])
        if args and not agg.accepts(args[0].type):
            if agg.approximate:
                raise self.error(f"{e.name}() is approximate and takes a number, not {args[0].type}", e.pos,
                                 SKETCH_HINT)
            raise self.fail(f"{e.name}({args[0].type}): {e.name}() takes {agg.takes}")
        result = agg.result([a.type for a in args])
        self.aggs.append(Agg(e.name, args, result, q))
        return AggRef(len(self.aggs) - 1, result)


def quantile(call: query.Call, b: ExprBinder) -> float:
    """The quantile (0..1) of a percentile call, checked."""
    if call.name not in ("percentile", "percentile_exact"):
        return int(call.name[1:]) / 100
    q = call.args[1]
    if not isinstance(q, query.Lit) or q.kind not in ("int", "float") or not 0 <= float(q.value) <= 100:  # type: ignore[arg-type]
        raise b.error(f"{call.name}(x, q) takes q as a number from 0 to 100", q.pos)
    return float(q.value) / 100  # type: ignore[arg-type]


def _is_null(e: query.Expr) -> bool:
    return isinstance(e, query.Lit) and e.kind == "null"


def _check_regex(b: ExprBinder, pattern: str, pos: int) -> None:
    """Refuse a pattern DuckDB (RE2) cannot compile, now rather than on every edge."""
    with scratch() as con:
        try:
            con.execute("SELECT regexp_matches('', $1::VARCHAR)", [pattern]).fetchall()
        except duckdb.Error as exc:
            raise b.error(f"bad regular expression: {str(exc).splitlines()[0]}", pos) from None


def is_aggregate(e: query.Expr) -> bool:
    return isinstance(e, query.Call) and e.name in AGGREGATIONS


def aggregate_calls(e: query.Expr) -> list[query.Call]:
    if isinstance(e, query.Call) and e.name in AGGREGATIONS:
        return [e]
    return [c for x in ast_children(e) for c in aggregate_calls(x)]


def refs_outside_aggregates(e: query.Expr) -> list[query.Col]:
    if isinstance(e, query.Col):
        return [e]
    if is_aggregate(e):
        return []
    return [c for x in ast_children(e) for c in refs_outside_aggregates(x)]


def ast_children(e: query.Expr) -> tuple[query.Expr, ...]:
    if isinstance(e, query.Call):
        return e.args
    if isinstance(e, query.Unary):
        return (e.operand,)
    if isinstance(e, query.Binary):
        return (e.left, e.right)
    if isinstance(e, query.InList):
        return (e.operand, *e.items)
    return ()
