"""Top-N pushdown: for `take N`, `top N by k` and `sort by ... | take N`, each edge sends
its own first N rows in the query's total order (the sort keys, then every column; for
`take`, the newest first) instead of all its rows; the collector takes the first N of
their union, which are the first N overall.

Sorting every row on every column costs a full sort, so with one sort key k the edge
first finds T, the last non-null key among its first N keys by k alone (a top-N that
DuckDB answers from a one-column scan, materialized once), then sorts only the rows
whose k is T or before it, and those with a null k (nulls sort last: they count when it
has fewer than N non-null keys): two plain filters, one comparison with a scalar and one
IS NULL, which DuckDB pushes into the scan (an OR of the two defeats the pushdown and is
many times slower), under one sort (render.py's _top_n writes it). Its first N in the
total order are among those rows, so it ships exactly them. With several sort keys the
edge sorts fully and ships N rows. A row whose integer arithmetic overflowed is shipped
too (one more row), so the collector reports it; so is one row whose sort keys overflowed
(one more: such a row's key is null at the edge, where the sort may cut it).
"""

from __future__ import annotations

from pxo.collector.plan.ir import Column, Limit, Op, Sort, SortKey, TopN, checked

CUTS = (Sort, Limit)  # what the collector still does over pushed-down rows


def push_down(local: Op, rest: list[Op]) -> tuple[TopN, int] | None:
    """The edge's top N over ``local`` (its row-local part) when the collector's part
    ``rest`` starts with a cut, and the most rows the edge then sends."""
    head = rest[0] if rest else None
    if isinstance(head, Limit):  # take: the newest rows (then every column decides)
        time = next((f for f in local.fields if f.name == "time"), None)
        keys: tuple[SortKey, ...] = (SortKey(Column(time.name, time.type), True),) if time is not None else ()
        n = head.count
    elif isinstance(head, Sort) and head.limit is not None:
        keys, n = head.keys, head.limit
    elif isinstance(head, Sort) and len(rest) > 1 and isinstance(rest[1], Limit):
        keys, n = head.keys, rest[1].count
    else:
        return None
    key_witness = n > 0 and any(checked(k.expr) for k in keys)  # render.py's _top_n ships it
    return TopN(local, keys, n), n + (1 if local.overflow else 0) + (1 if key_witness else 0)
