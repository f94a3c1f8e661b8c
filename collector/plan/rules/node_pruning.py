"""`where node == "x"` (or `node in (...)`, `node != "x"`) in the first `where`s tells which
nodes can contribute: the others are not asked (and are reported as skipped)."""

from __future__ import annotations

from pxo.collector.plan.ir import NODE, Call, Column, Const, Expr, Filter, Op, chain


def node_filter(plan: Op) -> tuple[frozenset[str] | None, frozenset[str]]:
    """The nodes the leading filters allow (None: any) and those they exclude."""
    only: set[str] | None = None
    excluded: set[str] = set()
    for op in chain(plan)[1:]:
        if not isinstance(op, Filter):
            break
        for c in _conjuncts(op.predicate):
            names = _names(c)
            if names is None:
                continue
            if isinstance(c, Call) and c.fn == "!=":
                excluded |= names
            else:
                only = names if only is None else only & names
    return (None if only is None else frozenset(only)), frozenset(excluded)


def _names(c: Expr) -> set[str] | None:
    """The node names ``c`` compares the node column with (None: it is no such test)."""
    if not isinstance(c, Call):
        return None
    if c.fn in ("==", "!="):
        a, b = c.args
        col, lit = (a, b) if _is_node(a) else (b, a)
        if not _is_node(col):
            return None
        items: tuple[Expr, ...] = (lit,)
    elif c.fn == "in" and _is_node(c.args[0]):
        items = c.args[1:]
    else:
        return None
    if all(isinstance(i, Const) and isinstance(i.value, str) for i in items):
        return {str(i.value) for i in items if isinstance(i, Const)}
    return None


def _is_node(e: Expr) -> bool:
    return isinstance(e, Column) and e.name == NODE


def _conjuncts(e: Expr) -> list[Expr]:
    if isinstance(e, Call) and e.fn == "and":
        return _conjuncts(e.args[0]) + _conjuncts(e.args[1])
    return [e]
