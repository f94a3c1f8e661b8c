"""The split of a logical plan into what every edge runs and what the collector runs
over the nodes' merged partial answers (Pixie's distributed splitter, for a chain).

The plan is cut at the first operator that needs every node's rows (summarize,
distinct, sort, take, top):

- each edge runs the row-local operators before it (where, project, extend) and then
  the cut operator's partial form: a summarize's partial aggregates per group, its
  distinct rows, or (rules/topn.py) a superset of its own first N rows in the query's
  total order; with no such operator, or a sort, its rows;
- the collector gathers the partial answers (one merge table named after the edge
  table), merges them (the summarize's finish, distinct again, the top N again), and
  runs every later operator.

Exactness: every partial is exact and complete, so the answer is the one a single
database holding every row would give (tests/collector/test_exactness.py checks it
against an evaluator of the documented semantics, tests/helpers/oracle.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pxo.collector.plan.aggregates import AGGREGATIONS, WEIGHT, holistic_columns, holistic_type
from pxo.collector.plan.ir import (
    INTERNAL,
    ROW_LOCAL,
    Aggregate,
    Distinct,
    Field,
    FinalAggregate,
    Gather,
    Op,
    PartialAggregate,
    Scan,
    Sort,
    Summary,
    chain,
)
from pxo.collector.plan.rules import column_pruning, topn
from pxo.collector.plan.types import INT


@dataclass(frozen=True)
class Split:
    edge: Op  # what every edge runs (its leaf a Scan at the edge)
    collector: Op  # what the collector runs (its leaf a Gather)
    complete: bool  # the partial answers must arrive whole (a cut one would give a wrong answer)
    edge_row_limit: int  # the most rows an edge needs to send (0: no limit of the plan's own)


def rebase(op: Op, source: Op) -> Op:
    """``op`` reading ``source`` instead of its own input."""
    return dataclasses.replace(op, source=source)  # type: ignore[arg-type]  # every operator but a leaf has one


def partial_fields(summary: Summary) -> tuple[Field, ...]:
    """The columns of a summarize's partial answer (render.py writes them in this order)."""
    fields = [Field(f"{INTERNAL}k{i}", e.type) for i, (_, e) in enumerate(summary.keys)]
    holistic = holistic_columns(summary)
    for j, (_, i) in enumerate(holistic):
        fields.append(Field(f"{INTERNAL}h{j}", holistic_type(summary.aggs[i])))
    if holistic:
        fields.append(Field(WEIGHT, INT))
    for i, a in enumerate(summary.aggs):
        fields += [Field(f"{INTERNAL}a{i}{suffix}", t) for suffix, t in AGGREGATIONS[a.fn].parts(a)]
    return tuple(fields)


def split(plan: Op) -> Split:
    ops = chain(plan)
    scan = ops[0]
    assert isinstance(scan, Scan)
    cut = next((i for i, op in enumerate(ops) if i > 0 and not isinstance(op, ROW_LOCAL)), len(ops))
    local: Op = dataclasses.replace(scan, at_edge=True)
    for op in ops[1:cut]:
        local = rebase(op, local)
    rest = ops[cut:]
    head = rest[0] if rest else None
    edge: Op
    if isinstance(head, Aggregate):
        edge = column_pruning.prune(PartialAggregate(local, head.summary, partial_fields(head.summary)))
        collector: Op = FinalAggregate(_gather(scan, edge), head.summary)
        later, complete, limit = rest[1:], True, 0
    else:
        if isinstance(head, Distinct):
            edge, limit, complete = Distinct(local, head.columns), 0, True
        elif (pushed := topn.push_down(local, rest)) is not None:
            edge, limit = pushed
            # rows the collector only sorts and cuts may be cut at the cap (the answer says
            # truncated); rows it still has to aggregate must all arrive
            complete = any(not isinstance(op, (*ROW_LOCAL, *topn.CUTS)) for op in rest)
        else:
            edge, limit = local, 0
            complete = any(not isinstance(op, ROW_LOCAL) and not _plain_sort(op) for op in rest)
        edge = column_pruning.prune(edge)
        collector, later = _gather(scan, edge), rest
    for op in later:
        collector = rebase(op, collector)
    return Split(edge, collector, complete, limit)


def _plain_sort(op: Op) -> bool:
    return isinstance(op, Sort) and op.limit is None


def _gather(scan: Scan, edge: Op) -> Gather:
    return Gather(scan.table, edge.fields, edge.overflow)


__all__ = ["Split", "split"]
