"""The mergeable sketch behind the approximate percentiles (DDSketch's logarithmic
mapping; docs/query-language.md "Percentiles").

A value x > 0 falls in bucket i = ceil(ln x / ln g), the interval (g^(i-1), g^i], whose
representative 2 g^i / (g + 1) is within (g - 1) / (g + 1) = RELATIVE_ERROR of every value
in it. Bucket keys are BIGINTs ordered like the values: i + OFFSET for x > 0, its
negation for x < 0, 0 for zero, and codes of their own for the infinities and NaN (which
come back exactly). Buckets keep the values' order, so the bucket at the exact rank
holds the exact value.
"""

from __future__ import annotations

import math
import sys

from sqlglot import exp

from pxo.collector.plan import sql as s
from pxo.collector.plan.types import Kind, Type, is_decimal

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
OFFSET = 100_000  # ln of a double / ln g lies within +-40,000
INF, NAN = 999_999, 1_000_000


def bucket(x: s.Sql, t: Type) -> s.Sql:
    """The bucket key of ``x`` (of type ``t``; NULL stays NULL), a BIGINT. Integers and
    decimals are never NaN nor infinite, and unsigned ones never negative: their form
    skips those tests (a sixth of an edge's p99 by container)."""
    d = s.cast(x.copy(), "DOUBLE")
    lg = s.num(math.log(GAMMA))

    def log_bucket(v: s.Sql) -> s.Sql:  # ceil(ln v / ln g) + OFFSET
        return exp.Add(this=s.fn("ceil", exp.Div(this=s.fn("ln", v), expression=lg.copy())),
                       expression=s.num(OFFSET))

    zero = exp.EQ(this=x.copy(), expression=s.num(0))
    if t.unsigned:
        key: s.Sql = s.case((zero, s.num(0)), default=s.cast(log_bucket(d), "BIGINT"))
    else:
        finite = s.cast(exp.Mul(this=s.fn("sign", d.copy()), expression=s.paren(log_bucket(s.fn("abs", d.copy())))),
                        "BIGINT")
        if t.kind is Kind.INT or is_decimal(t):
            key = s.case((zero, s.num(0)), default=finite)
        else:
            key = s.case((s.fn("isnan", d.copy()), s.num(NAN)),
                         (exp.EQ(this=d.copy(), expression=s.num(0)), s.num(0)),
                         (s.fn("isinf", d.copy()), exp.Mul(this=s.fn("sign", d.copy()), expression=s.num(INF))),
                         default=finite)
    return s.cast(key, "BIGINT")


def representative(k: s.Sql) -> s.Sql:
    """The value (a DOUBLE) that stands for every value in the bucket of key ``k``."""
    lg, scale = s.num(math.log(GAMMA)), s.num(math.log(2 / (GAMMA + 1)))
    top = s.num(sys.float_info.max)  # the top bucket's representative may exceed the largest double
    magnitude = s.fn("exp", exp.Add(this=exp.Mul(this=s.paren(exp.Sub(this=s.fn("abs", k.copy()),
                                                                        expression=s.num(OFFSET))),
                                                 expression=lg), expression=scale))
    return s.case(
        (exp.EQ(this=k.copy(), expression=s.num(NAN)), s.num(math.nan)),
        (exp.EQ(this=k.copy(), expression=s.num(0)), s.num(0.0)),
        (exp.EQ(this=s.fn("abs", k.copy()), expression=s.num(INF)),
         exp.Mul(this=s.fn("sign", k.copy()), expression=s.num(math.inf))),
        default=exp.Mul(this=s.fn("sign", k.copy()), expression=s.fn("least", magnitude, top)))
