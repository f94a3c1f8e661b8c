"""The scalar operators and functions of the language: what each takes and gives
(docs/query-language.md "Expressions" and "Types"). The binder calls these with bound
arguments; render_expr.py turns the calls they make (``ir.Call``) into SQL.

Integer arithmetic is exact and its result must fit a signed 64-bit integer: the
calls that can overflow get a site (``Binding.site``), and an overflow fails the
query naming it (render_expr.py says how an edge reports one without failing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pxo.collector.plan.ir import Call, Const, Expr
from pxo.collector.plan.types import BOOL, DURATION, FLOAT, HUGEINT, INT, STRING, TIME, Kind, Type, own, unify


class Binding(Protocol):
    """What a function's rule needs from the binder."""

    def site(self) -> int:
        """A new overflow site: the expression being bound."""

    def fail(self, message: str, *, at_call: bool = False) -> Exception:
        """A type error (at the operator, or with ``at_call`` at the call)."""


def as_int(x: Expr, b: Binding) -> Expr:
    """``x`` (an int) as a language int: a value of a type wider than 64 bits (UBIGINT,
    HUGEINT) is checked on the way (a value beyond the range is an overflow)."""
    if x.type.wide:
        return Call("to_int", (x,), INT, b.site())
    return x


def _kinds(*args: Expr) -> tuple[Kind, ...]:
    return tuple(a.type.kind for a in args)


def _num(t: Type) -> bool:
    return t.numeric or t.kind is Kind.NULL


def arithmetic(op: str, a: Expr, b: Expr, bd: Binding) -> Expr:
    """``a op b`` for + - * / %."""
    ka, kb = a.type.kind, b.type.kind
    null = Kind.NULL
    if _num(a.type) and _num(b.type):
        if op == "/":  # always exact: as floats
            return Call("div", (a, b), FLOAT)
        if {ka, kb} <= {Kind.INT, null} and not ka is kb is null:
            if op == "%":
                return Call("mod", (as_int(a, bd), as_int(b, bd)), INT)
            return Call(op, (as_int(a, bd), as_int(b, bd)), INT, bd.site())
        return Call("mod" if op == "%" else op, (a, b), FLOAT)
    if op in "+-" and (ka, kb) in ((Kind.TIME, Kind.DURATION), (Kind.DURATION, Kind.TIME)):
        if op == "-" and ka is Kind.DURATION:
            raise bd.fail(f"'-' takes a time and a duration in this order, not {a.type} - {b.type}")
        return Call(op, (a, b), TIME)
    if op == "-" and ka is kb is Kind.TIME:
        return Call("-", (a, b), DURATION)
    if op in "+-" and ka is kb is Kind.DURATION:
        return Call(op, (a, b), DURATION)
    if op == "*" and {ka, kb} == {Kind.DURATION, Kind.INT}:
        return Call("*", (as_int(a, bd), as_int(b, bd)), DURATION)
    raise bd.fail(f"'{op}' is not defined for {a.type} {op} {b.type}: arithmetic takes numbers "
                  "(and times and durations for + and -)")


def negate(a: Expr, bd: Binding) -> Expr:
    if isinstance(a, Const) and a.type.kind in (Kind.INT, Kind.FLOAT) and isinstance(a.value, int | float):
        return Const(-a.value, a.type)
    if a.type.kind is Kind.INT:
        return Call("neg", (as_int(a, bd),), INT, bd.site())
    if a.type.kind in (Kind.FLOAT, Kind.DURATION, Kind.NULL):
        return Call("neg", (a,), own(a.type.kind) if a.type.kind is not Kind.NULL else INT)
    raise bd.fail(f"'-' takes a number or a duration, not {a.type}")


def compare(op: str, a: Expr, b: Expr, bd: Binding) -> Expr:
    """== != < <= > >=; a comparison with a null value is null (docs: "Nulls")."""
    if unify(a.type, b.type) is None:
        raise bd.fail(f"cannot compare {a.type} with {b.type}")
    return Call(op, (a, b), BOOL)


def logic(op: str, args: tuple[Expr, ...], bd: Binding) -> Expr:
    for x in args:
        if x.type.kind not in (Kind.BOOL, Kind.NULL):
            raise bd.fail(f"'{op}' takes conditions (true or false), not {x.type}")
    return Call(op, args, BOOL)


def text_args(name: str, args: tuple[Expr, ...], bd: Binding) -> None:
    for x in args:
        if x.type.kind not in (Kind.STRING, Kind.NULL):
            raise bd.fail(f"{name}({', '.join(str(a.type) for a in args)}): {name} takes strings")


@dataclass(frozen=True)
class Scalar:
    arity: tuple[int, int]
    bind: Callable[[tuple[Expr, ...], Binding], Expr]


def _string_fn(fn: str, out: Type) -> Callable[[tuple[Expr, ...], Binding], Expr]:
    def bind(args: tuple[Expr, ...], bd: Binding) -> Expr:
        text_args(fn, args, bd)
        return Call(fn, args, out)
    return bind


def _abs(args: tuple[Expr, ...], bd: Binding) -> Expr:
    (x,) = args
    if x.type.kind is Kind.INT:
        return Call("abs", (as_int(x, bd),), INT, bd.site())
    if _num(x.type):
        return Call("abs", (x,), FLOAT)
    raise bd.fail(f"abs({x.type}): abs takes a number")


def _float_fn(fn: str) -> Callable[[tuple[Expr, ...], Binding], Expr]:
    """floor, ceil: an int is already whole (it stays as it is); a float is rounded."""
    def bind(args: tuple[Expr, ...], bd: Binding) -> Expr:
        (x,) = args
        if x.type.kind is Kind.INT:
            return x
        if not _num(x.type):
            raise bd.fail(f"{fn}({x.type}): {fn} takes a number")
        return Call(fn, (x,), FLOAT)
    return bind


def _round(args: tuple[Expr, ...], bd: Binding) -> Expr:
    x = args[0]
    digits = args[1] if len(args) > 1 else Const(0, INT)
    if not isinstance(digits, Const) or not isinstance(digits.value, int) or digits.type.kind is not Kind.INT:
        raise bd.fail("round(x, digits) takes digits as a whole number, e.g. round(x, 2)", at_call=True)
    if not _num(x.type):
        raise bd.fail(f"round({x.type}): round takes a number")
    if x.type.kind is Kind.INT and digits.value >= 0:
        return x
    return Call("round", (x, digits), FLOAT)


def _sqrt(args: tuple[Expr, ...], bd: Binding) -> Expr:
    (x,) = args
    if not _num(x.type):
        raise bd.fail(f"sqrt({x.type}): sqrt takes a number")
    return Call("sqrt", (x,), FLOAT)


def _coalesce(args: tuple[Expr, ...], bd: Binding) -> Expr:
    """The first value that is not null. Values of one DuckDB type keep it; ints of
    several types meet in a BIGINT, or a HUGEINT when one of them may not fit in 64 bits
    (nothing is checked: coalesce computes nothing)."""
    out = args[0].type
    for x in args[1:]:
        met = unify(out, x.type)
        if met is None:
            raise bd.fail(f"coalesce({', '.join(str(a.type) for a in args)}): its values must have one type")
        out = met
    if all(x.type == args[0].type or x.type.kind is Kind.NULL for x in args):
        return Call("coalesce", args, args[0].type if args[0].type.kind is not Kind.NULL else out)
    if out.kind is Kind.INT and any(x.type.wide for x in args):
        return Call("coalesce", args, HUGEINT)
    return Call("coalesce", args, own(out.kind))


def _format_bytes(args: tuple[Expr, ...], bd: Binding) -> Expr:
    (x,) = args
    if x.type.kind not in (Kind.INT, Kind.NULL):
        raise bd.fail(f"format_bytes({x.type}): format_bytes takes an int of bytes")
    return Call("format_bytes", (as_int(x, bd),), STRING)


def _is(fn: str) -> Callable[[tuple[Expr, ...], Binding], Expr]:
    return lambda args, bd: Call(fn, args, BOOL)


SCALARS: dict[str, Scalar] = {
    "isnull": Scalar((1, 1), _is("isnull")),
    "isnotnull": Scalar((1, 1), _is("isnotnull")),
    "tostring": Scalar((1, 1), lambda args, bd: Call("tostring", args, STRING)),
    "lower": Scalar((1, 1), _string_fn("lower", STRING)),
    "upper": Scalar((1, 1), _string_fn("upper", STRING)),
    "strlen": Scalar((1, 1), _string_fn("strlen", INT)),
    "strcat": Scalar((1, 16), lambda args, bd: Call("strcat", args, STRING)),
    "abs": Scalar((1, 1), _abs),
    "floor": Scalar((1, 1), _float_fn("floor")),
    "ceil": Scalar((1, 1), _float_fn("ceil")),
    "round": Scalar((1, 2), _round),
    "sqrt": Scalar((1, 1), _sqrt),
    "coalesce": Scalar((1, 16), _coalesce),
    "format_bytes": Scalar((1, 1), _format_bytes),
    "bin": Scalar((2, 2), lambda args, bd: bin_(args, bd)),
}


def bin_(args: tuple[Expr, ...], bd: Binding) -> Expr:
    """bin(x, width): x rounded down to a multiple of width (times: since the Unix epoch)."""
    x, width = args
    if isinstance(width, Const) and isinstance(width.value, int | float) and not isinstance(width.value, bool) \
            and width.value > 0:
        if width.type.kind is Kind.DURATION and x.type.kind in (Kind.TIME, Kind.NULL):
            return Call("bin_time", (x, width), TIME)
        if width.type.kind is Kind.INT and x.type.kind is Kind.INT:
            return Call("bin_int", (as_int(x, bd), width), INT, bd.site())
        if width.type.numeric and _num(x.type):
            return Call("bin_float", (x, width), FLOAT)
        if width.type.kind is Kind.DURATION or x.type.kind is Kind.TIME:
            raise bd.fail(f"bin({x.type}, {width.type}): a time takes a duration as its width (e.g. 5m), "
                          "a number a number")
    raise BinWidthError()


class BinWidthError(Exception):
    """bin's width is not a positive literal: the binder points at the width."""


def regex(x: Expr, pattern: Expr, bd: Binding) -> Expr:
    text_args("=~", (x,), bd)
    return Call("regex", (x, pattern), BOOL)


def contains(op: str, a: Expr, b: Expr, bd: Binding) -> Expr:
    text_args(op, (a, b), bd)
    return Call("contains" if op == "contains" else "!contains", (a, b), BOOL)


def membership(negate: bool, x: Expr, items: tuple[Expr, ...], bd: Binding) -> Expr:
    for i in items:
        if unify(x.type, i.type) is None:
            raise bd.fail(f"cannot compare {x.type} with {i.type} in 'in'")
    return Call("!in" if negate else "in", (x, *items), BOOL)


def null_test(negate: bool, x: Expr) -> Expr:
    return Call("isnotnull" if negate else "isnull", (x,), BOOL)
