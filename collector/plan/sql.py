"""SQL as syntax trees: small builders over sqlglot's expressions, and the one place a
tree becomes text (``to_sql``).

Values reach SQL only as literals of the tree or as bound parameters: ``$start`` and
``$end`` (the time range, which an edge binds) and ``node`` (an edge's name, bound by
``to_sql`` when that edge's SQL is written: edges bind only $start and $end, see
Plan.fragments). Names are always quoted identifiers.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re

from sqlglot import exp
from sqlglot.generators.duckdb import DuckDBGenerator

Sql = exp.Expr

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def ident(name: str) -> exp.Identifier:
    if not _PLAIN.fullmatch(name):
        raise ValueError(f"not a plain name: {name!r}")
    return exp.Identifier(this=name, quoted=True)


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=ident(name), table=ident(table) if table else None)


def table(name: str) -> exp.Table:
    return exp.Table(this=ident(name))


def star() -> exp.Star:
    return exp.Star()


def fn(name: str, *args: Sql) -> exp.Anonymous:
    """A DuckDB function by its own name (the gate allows it by that name)."""
    return exp.Anonymous(this=name, expressions=list(args))


def num(value: int | float) -> Sql:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return cast(exp.Literal.string(repr(value)), "DOUBLE")
        return cast(exp.Literal.number(repr(value)), "DOUBLE")  # 1.5 alone is a DECIMAL in DuckDB
    return exp.Literal.number(str(value))


def string(value: str) -> exp.Literal:
    if "\x00" in value:
        raise ValueError("NUL in a string literal")
    return exp.Literal.string(value)


def timestamp(value: dt.datetime) -> Sql:
    return cast(string(value.strftime("%Y-%m-%d %H:%M:%S.%f")), "TIMESTAMP")


def null(type_sql: str) -> Sql:
    return cast(exp.Null(), type_sql)


@functools.lru_cache(maxsize=64)
def _datatype(type_sql: str) -> exp.DataType:
    return exp.DataType.build(type_sql, dialect="duckdb")


def cast(e: Sql, type_sql: str) -> exp.Cast:
    return exp.Cast(this=e, to=_datatype(type_sql).copy())


def param(name: str) -> exp.Placeholder:
    return exp.Placeholder(this=exp.Identifier(this=name))


def case(*whens: tuple[Sql, Sql], default: Sql | None = None) -> exp.Case:
    return exp.Case(ifs=[exp.If(this=c, true=v) for c, v in whens], default=default)


def and_(*conds: Sql) -> Sql:
    out = conds[0]
    for c in conds[1:]:
        out = exp.And(this=out, expression=c)
    return out


def or_(*conds: Sql) -> Sql:
    out = conds[0]
    for c in conds[1:]:
        out = exp.Or(this=out, expression=c)
    return out


def paren(e: Sql) -> exp.Paren:
    return exp.Paren(this=e)


def is_null(e: Sql) -> exp.Is:
    return exp.Is(this=e, expression=exp.Null())


def not_null(e: Sql) -> exp.Not:
    return exp.Not(this=is_null(e))


def ordered(e: Sql, *, desc: bool = False) -> exp.Ordered:
    """A sort key: nulls last, in both directions (written out, not left to a default)."""
    return exp.Ordered(this=e, desc=desc, nulls_first=False)


def select(*items: tuple[str, Sql] | Sql) -> exp.Select:
    """SELECT of (name, expression) pairs (aliased) or bare expressions."""
    cols = [exp.Alias(this=i[1], alias=ident(i[0])) if isinstance(i, tuple) else i for i in items]
    return exp.Select(expressions=cols)


def from_(q: exp.Select, source: str | Sql) -> exp.Select:
    q.set("from_", exp.From(this=table(source) if isinstance(source, str) else source))
    return q


def subquery(q: Sql, alias: str | None = None) -> exp.Subquery:
    return exp.Subquery(this=q, alias=exp.TableAlias(this=ident(alias)) if alias else None)


def with_(ctes: list[tuple[str, Sql, bool | None]], body: Sql) -> Sql:
    """``body`` after WITH ``ctes`` ((name, query, materialized: True, False or None for
    DuckDB's choice))."""
    if ctes:
        body.set("with_", exp.With(expressions=[
            exp.CTE(this=q, alias=exp.TableAlias(this=ident(n)), materialized=m) for n, q, m in ctes]))
    return body


def window(f: Sql, *, partition: list[Sql] | None = None, order: list[exp.Ordered] | None = None,
           running: bool = False) -> exp.Window:
    spec = exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW") \
        if running else None
    return exp.Window(this=f, partition_by=partition or None,
                      order=exp.Order(expressions=order) if order else None, spec=spec)


def create_temp_table(name: str, columns: tuple[tuple[str, str], ...]) -> exp.Create:
    """CREATE TEMP TABLE name (column type, ...)."""
    defs = [exp.ColumnDef(this=ident(n), kind=_datatype(t).copy()) for n, t in columns]
    return exp.Create(this=exp.Schema(this=table(name), expressions=defs), kind="TABLE",
                      properties=exp.Properties(expressions=[exp.TemporaryProperty()]))


def create_temp_view(name: str, q: Sql) -> exp.Create:
    return exp.Create(this=table(name), kind="VIEW", expression=q,
                      properties=exp.Properties(expressions=[exp.TemporaryProperty()]))


class _Generator(DuckDBGenerator):
    """DuckDB's SQL, with the node bound, sort keys' null order written out, and no
    string literal spelling a parameter: an edge finds $start and $end by looking for
    them in the text (edge/store.py), so a literal holding a '$' is written as pieces
    joined around '$' ('a$start' -> ('a' || '$' || 'start'))."""

    def __init__(self, binds: dict[str, str]) -> None:
        super().__init__(dialect="duckdb")
        self.binds = binds

    def placeholder_sql(self, expression: exp.Placeholder) -> str:
        name = expression.name
        value = self.binds.get(name)
        return self.sql(string(value)) if value is not None else f"${ident(name).name}"

    def literal_sql(self, expression: exp.Literal) -> str:
        if expression.is_string and "$" in expression.this:
            pieces = [super(_Generator, self).literal_sql(exp.Literal.string(p)) for p in expression.this.split("$")]
            return "(" + " || '$' || ".join(pieces) + ")"
        result: str = super().literal_sql(expression)
        return result

    def ordered_sql(self, expression: exp.Ordered) -> str:
        order = "DESC" if expression.args.get("desc") else "ASC"
        nulls = "FIRST" if expression.args.get("nulls_first") else "LAST"
        return f"{self.sql(expression, 'this')} {order} NULLS {nulls}"


def to_sql(tree: Sql, **binds: str) -> str:
    """The tree as DuckDB SQL, ``binds`` (e.g. node=...) written in as literals."""
    text: str = _Generator(binds).generate(tree, copy=True)
    return text
