"""An edge reads only the columns its part of the query uses: binding every column of a
wide table costs an edge as much as a tenth of a count by pod. Columns a projection
computes that nothing above uses are dropped too, unless their integer arithmetic
may overflow (an overflow is reported whether or not the value is used)."""

from __future__ import annotations

import dataclasses

from pxo.collector.plan.ir import NODE, Distinct, Filter, Op, PartialAggregate, Project, Scan, TopN, checked, reads


def prune(edge: Op) -> Op:
    """``edge`` (an edge's part, its leaf a Scan) reading no column it does not need."""
    return _prune(edge, None)


def _prune(op: Op, need: set[str] | None) -> Op:
    """``op`` when the operator above needs ``need`` of its columns (None: all of them)."""
    if isinstance(op, Scan):
        if need is None:
            return op
        return dataclasses.replace(op, columns=tuple(f for f in op.columns if f.name == NODE or f.name in need))
    below: set[str] | None
    if isinstance(op, PartialAggregate):
        below = set().union(*[reads(e) for e in op.summary.exprs()])
    elif isinstance(op, Distinct):
        below = set(op.columns)
    elif isinstance(op, Filter):
        below = None if need is None else need | reads(op.predicate)
    elif isinstance(op, Project):
        if need is not None:
            kept = tuple(it for it in op.items if it[0] in need or checked(it[1]))
            op = dataclasses.replace(op, items=kept or op.items[:1])
        below = set().union(*[reads(e) for _, e in op.items])
    else:
        assert isinstance(op, TopN), op  # its order reads every column
        below = None
    assert op.input is not None
    return dataclasses.replace(op, source=_prune(op.input, below))
