"""A planned query: what each edge runs (Fragment) and what the collector runs over the
merged partial answers (Plan.final_sql), with what the executor needs to run them.

The edge contract (proto/pxo/v1/pxo.proto, Fragment): an edge receives one SELECT and
binds the time range as $start and $end itself; it binds nothing else. So the node's
name, a parameter of the fragment's tree, is written into each node's own text as a
literal when that node's SQL is rendered (``Fragment.sql``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pxo.collector.errors import IntegerOverflow, position
from pxo.collector.plan import sql as s
from pxo.collector.plan.ir import OV, Site


@dataclass(frozen=True)
class Fragment:
    """What every edge runs to fill one merge table of the final step."""

    table: str  # the edge table it reads: an edge without it is skipped
    tree: s.Sql = field(compare=False)  # the SELECT, with the node as a parameter
    columns: tuple[tuple[str, str], ...]  # the merge table at the collector: (name, DuckDB type)
    add_node: bool = False  # the collector adds the node column (the SQL form)
    text: str = ""  # the tree as SQL, the node still a parameter: what makes two fragments equal
    _by_node: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def sql(self, node: str) -> str:
        """This node's SQL (remembered: a plan is reused by repeated queries)."""
        text = self._by_node.get(node)
        if text is None:
            text = self._by_node[node] = s.to_sql(self.tree, node=node)
        return text


@dataclass(frozen=True)
class Plan:
    fragments: dict[str, Fragment]  # merge table name -> what each edge runs to fill it
    final_sql: str  # runs at the collector over the merge tables
    start: dt.datetime | None = None  # UTC, inclusive
    end: dt.datetime | None = None  # UTC, exclusive
    edge_row_limit: int = 0  # pushed-down limit (0: none)
    # The partial answers must be complete for the answer to be right (aggregates,
    # and rows the collector still has to aggregate or cut): a node holding more
    # than the row cap fails the query instead of truncating it.
    complete: bool = False
    only_nodes: frozenset[str] | None = None  # where node == ...: only these can contribute
    excluded_nodes: frozenset[str] = frozenset()  # where node != ...
    approximate: tuple[str, ...] = ()  # answer columns computed from sketches (within RELATIVE_ERROR)
    text: str = ""  # the query
    sites: tuple[Site, ...] = ()  # the expressions whose int results may overflow
    witness: str = ""  # the final step's column naming an overflow's site (ir.OV), when it has one

    def skip_reason(self, node: str) -> str:
        """Why this node cannot contribute ('' when it can)."""
        if (self.only_nodes is not None and node not in self.only_nodes) or node in self.excluded_nodes:
            return "the query's where clause excludes this node"
        return ""

    def overflow(self, site: int) -> IntegerOverflow:
        """The error of an integer overflow in the expression ``sites[site]``."""
        where = self.sites[site]
        line, column = position(self.text, where.pos)
        return IntegerOverflow(where.text, f"integer overflow in {where.text}: the result is beyond the range of "
                                           "an int (signed 64-bit, about ±9.2e18)",
                               line=line, column=column, hint="for larger values compute in floats, e.g. x * 1.0 * y")


__all__ = ["OV", "Fragment", "Plan"]
