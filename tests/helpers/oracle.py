"""An evaluator of the query language as docs/query-language.md describes it, in plain
Python: no DuckDB, no planner code (only the parser's tree, collector/query.py). The
exactness tests hold the distributed answers to it, so a mistranslation shared by the
edges' SQL and the collector's cannot pass.

``evaluate`` gives the answer's columns and rows in order, or raises Overflow naming
every expression whose int result left the signed 64-bit range. Approximate
percentiles are computed exactly here; the tests check the documented bound.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pxo.collector import query as q

INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
EPOCH = dt.datetime(1970, 1, 1)
SKETCHED = {"percentile", "p50", "p90", "p95", "p99"}
AGGREGATES = SKETCHED | {"count", "countif", "sum", "min", "max", "avg", "dcount", "stdev", "percentile_exact"}


class Overflow(Exception):
    def __init__(self, texts: set[str]) -> None:
        super().__init__(", ".join(sorted(texts)))
        self.texts = texts


# -- values: order, equality ----------------------------------------------------------


def _cmp(a: Any, b: Any) -> int:
    """DuckDB's order of two non-null values of one type: NaN above every other number."""
    a_nan, b_nan = isinstance(a, float) and math.isnan(a), isinstance(b, float) and math.isnan(b)
    if a_nan or b_nan:
        return int(a_nan) - int(b_nan)
    return -1 if a < b else (1 if a > b else 0)


def compare_keys(a: Sequence[tuple[Any, bool]], b: Sequence[tuple[Any, bool]]) -> int:
    """Sort keys (value, descending) compared in turn; nulls last in both directions."""
    for (x, desc), (y, _) in zip(a, b, strict=True):
        c = (x is None) - (y is None) if x is None or y is None else (-_cmp(x, y) if desc else _cmp(x, y))
        if c:
            return c
    return 0


def same_key(v: Any) -> Any:
    """Values a group or `distinct` treats as one: NaN is NaN, -0.0 is 0.0."""
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else v + 0.0
    return (type(v) is bool, v)


def equal(a: Any, b: Any) -> bool:
    return _cmp(a, b) == 0


# -- expressions -------------------------------------------------------------------


@dataclass
class Context:
    kinds: dict[str, str]  # the relation's columns and their kinds (int, float, string, ...)
    overflows: set[str] = field(default_factory=set)

    def resolve(self, name: str) -> str:
        if name in self.kinds:
            return name
        return next(c for c in self.kinds if c.lower() == name.lower())

    def kind(self, e: q.Expr) -> str:
        """The kind of ``e``'s values (docs: "Types"); "null" for the literal null."""
        if isinstance(e, q.Lit):
            return {"str": "string"}.get(e.kind, e.kind)
        if isinstance(e, q.Col):
            return self.kinds[self.resolve(e.name)]
        if isinstance(e, q.Unary):
            return "bool" if e.op == "not" else self.kind(e.operand)
        if isinstance(e, q.InList):
            return "bool"
        if isinstance(e, q.Binary):
            if e.op not in ("+", "-", "*", "/", "%"):
                return "bool"
            a, b = self.kind(e.left), self.kind(e.right)
            if e.op == "/":
                return "float"
            if {a, b} <= {"int", "null"} and {a, b} != {"null"}:
                return "int"
            if "time" in (a, b):
                return "time" if {a, b} == {"time", "duration"} else "duration"
            return "duration" if "duration" in (a, b) else "float"
        args = [self.kind(a) for a in e.args]
        first = args[0] if args else "int"
        if e.name in ("isnull", "isnotnull"):
            return "bool"
        if e.name in ("tostring", "lower", "upper", "strcat", "format_bytes"):
            return "string"
        if e.name in ("strlen", "count", "countif", "dcount"):
            return "int"
        if e.name in ("sqrt", "avg", "stdev", *SKETCHED):
            return "float"
        if e.name == "round":
            digits = e.args[1] if len(e.args) > 1 else None
            negative = isinstance(digits, q.Unary) or (isinstance(digits, q.Lit) and int(digits.value) < 0)  # type: ignore[call-overload]
            return "int" if first == "int" and not negative else "float"
        if e.name == "coalesce":
            known = {a for a in args if a != "null"}
            return "float" if known == {"int", "float"} else (known.pop() if len(known) == 1 else "null")
        if e.name == "bin":
            return "time" if first == "time" else ("int" if first == args[1] == "int" else "float")
        return first  # abs, floor, ceil, sum, min, max, percentile_exact: as their argument


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _checked(cx: Context, e: q.Expr, *values: Any) -> bool:
    """False (and the overflow noted) when a non-null int is beyond the 64-bit range."""
    if any(_is_int(v) and not INT_MIN <= v <= INT_MAX for v in values):
        cx.overflows.add(q.unparse(e))
        return False
    return True


def _divide(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b)
    return a / b


def _arith(cx: Context, e: q.Binary, a: Any, b: Any) -> Any:
    op = e.op
    if op == "/":
        return None if a is None or b is None else _divide(float(a), float(b))
    ints = cx.kind(e) == "int"
    if ints and not _checked(cx, e, a, b):  # an int operand is a 64-bit one
        return None
    if a is None or b is None:
        return None
    if ints:
        if op == "%":  # the sign of the dividend; x % 0 is null
            return None if b == 0 else (abs(a) % abs(b)) * (1 if a >= 0 else -1)
        out = a + b if op == "+" else a - b if op == "-" else a * b
        return out if _checked(cx, e, out) else None
    if isinstance(a, dt.timedelta) or isinstance(b, dt.timedelta) or isinstance(a, dt.datetime):
        return a + b if op == "+" else a - b if op == "-" else a * b
    x, y = float(a), float(b)
    if op == "%":
        return math.nan if y == 0 or math.isinf(x) else math.fmod(x, y)
    return x + y if op == "+" else x - y if op == "-" else x * y


def _kleene(op: str, a: Any, b: Any) -> Any:
    if op == "and":
        if a is False or b is False:
            return False
        return None if a is None or b is None else True
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _round(v: float, digits: int) -> float:
    def half_away(x: float) -> float:
        f = math.floor(abs(x))
        return math.copysign(f + (1 if abs(x) - f >= 0.5 else 0), x)
    if math.isnan(v) or math.isinf(v):
        return v
    if digits < 0:
        m = 10.0 ** -digits
        return half_away(v / m) * m
    m = 10.0 ** digits
    return half_away(v * m) / m


def tostring(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    return str(v)


def _function(cx: Context, e: q.Call, args: list[Any]) -> Any:
    n, x = e.name, (args[0] if args else None)
    if n == "isnull":
        return x is None
    if n == "isnotnull":
        return x is not None
    if n == "coalesce":
        return next((a for a in args if a is not None), None)
    if n == "strcat":
        return "".join(tostring(a) or "" for a in args)
    if n == "bin":
        return _bin(cx, e, x, args[1])
    if n == "abs" and x is not None and cx.kind(e) == "int" and not _checked(cx, e, x):
        return None
    if x is None:
        return None
    if n == "tostring":
        return tostring(x)
    if n in ("lower", "upper"):
        return x.lower() if n == "lower" else x.upper()
    if n == "strlen":
        return len(x)
    if n == "abs":
        return abs(x) if not _is_int(x) or (_checked(cx, e, x) and _checked(cx, e, abs(x))) else None
    if n in ("floor", "ceil"):
        if _is_int(x) or math.isnan(x) or math.isinf(x):
            return x
        return float(math.floor(x) if n == "floor" else math.ceil(x))
    if n == "round":
        digits = args[1] if len(args) > 1 else 0
        return x if _is_int(x) and digits >= 0 else _round(float(x), digits)
    if n == "sqrt":
        return math.nan if x < 0 or math.isnan(x) else math.sqrt(x)
    raise NotImplementedError(n)


def _bin(cx: Context, e: q.Call, x: Any, w: Any) -> Any:
    """Rounded down to a multiple of w; times from the Unix epoch."""
    if isinstance(w, dt.timedelta):
        return None if x is None else EPOCH + ((x - EPOCH) // w) * w
    if cx.kind(e) == "int":
        if not _checked(cx, e, x) or x is None:
            return None
        out = x - x % w
        return out if _checked(cx, e, out) else None
    if x is None:
        return None
    steps = _divide(float(x), float(w))  # IEEE 754: an infinite or NaN quotient stays one
    return (math.floor(steps) if math.isfinite(steps) else steps) * float(w)


def evaluate_expr(cx: Context, e: q.Expr, row: dict[str, Any], aggs: Callable[[q.Call], Any] | None = None) -> Any:
    """``e`` over ``row``. Every part is evaluated (an overflow anywhere counts)."""
    def ev(x: q.Expr) -> Any:
        return evaluate_expr(cx, x, row, aggs)
    if isinstance(e, q.Lit):
        return dt.timedelta(microseconds=int(e.value)) if e.kind == "duration" else e.value  # type: ignore[call-overload]
    if isinstance(e, q.Col):
        return row[cx.resolve(e.name)]
    if isinstance(e, q.Call):
        if e.name in AGGREGATES:
            assert aggs is not None
            return aggs(e)
        return _function(cx, e, [ev(a) for a in e.args])
    if isinstance(e, q.Unary):
        v = ev(e.operand)
        if e.op == "not":
            return None if v is None else not v
        if isinstance(e.operand, q.Lit):  # a negative literal
            return -v
        if cx.kind(e) == "int":
            return -v if _checked(cx, e, v) and v is not None and _checked(cx, e, -v) else None
        return None if v is None else -v
    if isinstance(e, q.InList):
        v = ev(e.operand)
        items = [_as_time(v, ev(i)) for i in e.items]
        hit = None if v is None else (True if any(i is not None and equal(v, i) for i in items)
                                      else (None if None in items else False))
        return (None if hit is None else not hit) if e.negate else hit
    if e.op in ("==", "!=") and any(isinstance(s, q.Lit) and s.kind == "null" for s in (e.left, e.right)):
        other = e.right if isinstance(e.left, q.Lit) and e.left.kind == "null" else e.left
        return (ev(other) is None) == (e.op == "==")
    a, b = ev(e.left), ev(e.right)
    if e.op in ("and", "or"):
        return _kleene(e.op, a, b)
    if e.op in ("+", "-", "*", "/", "%"):
        return _arith(cx, e, a, b)
    if a is None or b is None:
        return None
    if e.op == "=~":
        return re.search(b, a) is not None
    if e.op in ("contains", "!contains"):
        return (b.lower() in a.lower()) == (e.op == "contains")
    a, b = _as_time(b, a), _as_time(a, b)
    c = _cmp(a, b)
    return {"==": c == 0, "!=": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[e.op]


def _as_time(other: Any, v: Any) -> Any:
    return q.parse_time(v) if isinstance(other, dt.datetime) and isinstance(v, str) else v


# -- aggregations ------------------------------------------------------------------------


def percentile(values: list[Any], fraction: float) -> Any:
    """The nearest rank: of n sorted values, the one at max(1, n - floor(n - q n)) - 1."""
    if not values:
        return None
    ordered = sorted(values, key=functools.cmp_to_key(_cmp))
    n = float(len(ordered))
    return ordered[int(max(1.0, n - math.floor(n - fraction * n)) - 1)]


def aggregate(cx: Context, call: q.Call, rows: list[dict[str, Any]]) -> Any:
    n = call.name
    if n == "count" and not call.args:
        return len(rows)
    values = [evaluate_expr(cx, call.args[0], r) for r in rows]
    if n == "countif":
        return sum(1 for v in values if v is True)
    present = [v for v in values if v is not None]
    if n == "count":
        return len(present)
    if n == "dcount":
        return len({same_key(v) for v in present})
    if not present:
        return None
    if n in ("min", "max"):
        return functools.reduce(lambda a, b: a if (_cmp(a, b) <= 0) == (n == "min") else b, present)
    if n == "sum":
        return sum(present) if all(_is_int(v) for v in present) else math.fsum(float(v) for v in present)
    if n == "avg":
        return float(sum(present)) / len(present) if all(_is_int(v) for v in present) \
            else math.fsum(float(v) for v in present) / len(present)
    if n == "stdev":
        xs = [float(v) for v in present]
        if len(xs) < 2:
            return None
        mean = math.fsum(xs) / len(xs)
        return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    fraction = float(call.args[1].value) / 100 if n in ("percentile", "percentile_exact") else int(n[1:]) / 100  # type: ignore[union-attr, arg-type]
    value = percentile(present, fraction)
    return float(value) if n in SKETCHED else value


# -- operators ----------------------------------------------------------------------------


@dataclass
class Relation:
    kinds: dict[str, str]  # its columns, in order, and their kinds
    rows: list[dict[str, Any]]
    ordered: bool = False  # rows are in a sort's order

    @property
    def columns(self) -> list[str]:
        return list(self.kinds)


def _all_columns(rel: Relation, row: dict[str, Any]) -> list[tuple[Any, bool]]:
    return [(row[c], False) for c in rel.columns]


Row = dict[str, Any]


def _sorted(rows: list[Row], key: Callable[[Row], list[tuple[Any, bool]]]) -> list[Row]:
    # every row's key is evaluated, once: even a lone row's (an overflow in a sort key counts)
    keyed = [(key(r), r) for r in rows]
    keyed.sort(key=functools.cmp_to_key(lambda a, b: compare_keys(a[0], b[0])))
    return [r for _, r in keyed]


def default_order(rel: Relation) -> list[dict[str, Any]]:
    """Unsorted answers: by time when there is one, then by every column."""
    if rel.ordered:
        return rel.rows
    lead = ["time"] if "time" in rel.columns else []
    return _sorted(rel.rows, lambda r: [(r[c], False) for c in lead] + _all_columns(rel, r))


def default_name(e: q.Expr) -> str | None:
    if isinstance(e, q.Col):
        return e.name
    if isinstance(e, q.Call) and e.name == "bin" and isinstance(e.args[0], q.Col):
        return e.args[0].name
    if isinstance(e, q.Call) and e.name in AGGREGATES:
        if not e.args:
            return f"{e.name}_"
        first = e.args[0]
        if isinstance(first, q.Col):
            if e.name in ("percentile", "percentile_exact"):
                return f"{e.name}_{first.name}_{str(e.args[1].value).replace('.', '_')}"  # type: ignore[union-attr]
            return f"{e.name}_{first.name}"
    return None


def _summarize(cx: Context, op: q.Summarize, rel: Relation) -> Relation:
    keys = [(it.name or (cx.resolve(it.expr.name) if isinstance(it.expr, q.Col) else default_name(it.expr))
             or f"key{i + 1}", it.expr) for i, it in enumerate(op.keys)]
    outs = [(it.name or default_name(it.expr) or f"agg{i + 1}", it.expr) for i, it in enumerate(op.aggs)]
    groups: dict[tuple[Any, ...], tuple[list[Any], list[dict[str, Any]]]] = {}
    for row in rel.rows:
        values = [evaluate_expr(cx, e, row) for _, e in keys]
        groups.setdefault(tuple(same_key(v) for v in values), (values, []))[1].append(row)
    if not keys and not groups:  # no by: one row, even over no rows
        groups[()] = ([], [])
    rows = []
    for values, members in groups.values():
        out = dict(zip([n for n, _ in keys], values, strict=True))
        for name, e in outs:
            out[name] = evaluate_expr(cx, e, {}, lambda call, m=members: aggregate(cx, call, m))  # type: ignore[misc]
        rows.append(out)
    return Relation({n: cx.kind(e) for n, e in [*keys, *outs]}, rows)


def _operator(cx: Context, op: q.Op, rel: Relation) -> Relation:
    cx.kinds = rel.kinds
    if isinstance(op, q.Where):
        return Relation(rel.kinds, [r for r in rel.rows if evaluate_expr(cx, op.predicate, r) is True], rel.ordered)
    if isinstance(op, q.Project):
        items = [(it.name or cx.resolve(it.expr.name), it.expr) for it in op.items]  # type: ignore[union-attr]
        rows = [{n: evaluate_expr(cx, e, r) for n, e in items} for r in rel.rows]
        return Relation({n: cx.kind(e) for n, e in items}, rows, rel.ordered)
    if isinstance(op, q.ProjectAway):
        drop = {cx.resolve(c.name) for c in op.names}
        kinds = {c: k for c, k in rel.kinds.items() if c not in drop}
        return Relation(kinds, [{c: r[c] for c in kinds} for r in rel.rows], rel.ordered)
    if isinstance(op, q.Extend):  # a column extended again keeps its place; new ones go last
        kinds = dict(rel.kinds)
        targets = []
        for it in op.items:
            name = next((c for c in rel.kinds if c.lower() == (it.name or "").lower()), it.name or "")
            targets.append((name, it.expr))
            kinds[name] = cx.kind(it.expr)
        rows = [{**r, **{t: evaluate_expr(cx, e, r) for t, e in targets}} for r in rel.rows]
        return Relation(kinds, rows, rel.ordered)
    if isinstance(op, q.Summarize):
        return _summarize(cx, op, rel)
    if isinstance(op, q.Distinct):
        cols = [cx.resolve(c.name) for c in op.names] or rel.columns
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in rel.rows:
            seen.setdefault(tuple(same_key(r[c]) for c in cols), {c: r[c] for c in cols})
        return Relation({c: rel.kinds[c] for c in cols}, list(seen.values()))
    if isinstance(op, q.Sort | q.Top):  # by the keys, then every column
        keys = op.keys if isinstance(op, q.Sort) else (op.key,)
        rows = _sorted(rel.rows, lambda r: [(evaluate_expr(cx, k.expr, r), k.desc) for k in keys]
                       + _all_columns(rel, r))
        return Relation(rel.kinds, rows if isinstance(op, q.Sort) else rows[:op.count], True)
    assert isinstance(op, q.Take)
    if rel.ordered:
        return Relation(rel.kinds, rel.rows[:op.count], True)
    lead = ["time"] if "time" in rel.kinds else []  # the newest rows, then every column decides
    rows = _sorted(rel.rows, lambda r: [(r[c], True) for c in lead] + _all_columns(rel, r))
    return Relation(rel.kinds, rows[:op.count])


def evaluate(text: str, kinds: dict[str, str], rows: list[dict[str, Any]], *, now: dt.datetime
             ) -> tuple[list[str], list[dict[str, Any]]]:
    """The answer to ``text`` over ``rows`` (each holding every column of ``kinds``, the
    table's columns, node first, and their kinds): its columns and rows, in order."""
    p = q.parse(text)
    rel = Relation(dict(kinds), list(rows))
    rng = p.range_op
    if rng is not None:
        start, end = ((now - dt.timedelta(seconds=rng.seconds), now) if isinstance(rng, q.Last)
                      else (rng.start, now) if isinstance(rng, q.Since) else (rng.start, rng.end))
        rel.rows = [r for r in rel.rows if r["time"] is not None and start <= r["time"] < end]
    cx = Context(rel.kinds)
    for op in p.ops:
        if not isinstance(op, q.Last | q.Since | q.Between):
            rel = _operator(cx, op, rel)
    if cx.overflows:
        raise Overflow(cx.overflows)
    return rel.columns, default_order(rel)
