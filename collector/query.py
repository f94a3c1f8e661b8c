"""The pxo query language: a pipe of operators after a table name.

    oom_events | last 1h
    oom_events | last 30m | take 10

Grammar (this release):

    query     := table ( "|" operator )*
    operator  := "last" DURATION          rows of the last DURATION (s, m, h, d, w)
               | ("take" | "limit") INT   at most INT rows

Every token keeps its offset, so an error can point at the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pxo.collector.errors import QueryError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_RANGE_SECONDS = 3650 * 86400

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<duration>\d+(?:s|m|h|d|w)\b)
  | (?P<int>\d+\b)
  | (?P<numword>\d+[A-Za-z_]\w*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<pipe>\|)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # duration, int, numword (a number with a bad unit), ident, pipe, end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise QueryError.at(text, pos, f"unexpected character {text[pos]!r}")
        if m.lastgroup != "ws":
            tokens.append(Token(m.lastgroup or "", m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


@dataclass(frozen=True)
class Last:
    seconds: int
    pos: int


@dataclass(frozen=True)
class Take:
    count: int
    pos: int


@dataclass
class Pipeline:
    table: str
    table_pos: int
    ops: list[Last | Take] = field(default_factory=list)

    @property
    def range_seconds(self) -> int | None:
        lasts = [op for op in self.ops if isinstance(op, Last)]
        return lasts[-1].seconds if lasts else None


OPERATORS = ("last", "take", "limit")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None, hint: str = "") -> QueryError:
        tok = tok or self.tok
        return QueryError.at(self.text, tok.pos, message, hint)

    def describe(self, tok: Token) -> str:
        return "the end of the query" if tok.kind == "end" else repr(tok.text)

    def parse(self) -> Pipeline:
        if self.tok.kind != "ident":
            raise self.error(f"expected a table name, found {self.describe(self.tok)}",
                             hint="a query starts with a table, e.g. oom_events | last 1h")
        pipeline = Pipeline(self.tok.text, self.tok.pos)
        self.i += 1
        while self.tok.kind == "pipe":
            self.i += 1
            pipeline.ops.append(self.operator())
        if self.tok.kind != "end":
            raise self.error(f"expected '|' or the end of the query, found {self.describe(self.tok)}")
        seen_last = [op for op in pipeline.ops if isinstance(op, Last)]
        if len(seen_last) > 1:
            raise QueryError.at(self.text, seen_last[1].pos, "the time range is given twice ('last')")
        return pipeline

    def operator(self) -> Last | Take:
        tok = self.tok
        if tok.kind != "ident":
            raise self.error(f"expected an operator ({', '.join(OPERATORS)}), found {self.describe(tok)}")
        name = tok.text.lower()
        self.i += 1
        if name == "last":
            arg = self.tok
            if arg.kind != "duration":
                raise self.error(f"expected a duration after 'last' (e.g. 30s, 15m, 1h, 7d, 2w), "
                                 f"found {self.describe(arg)}")
            self.i += 1
            seconds = int(arg.text[:-1]) * _UNITS[arg.text[-1]]
            if seconds == 0 or seconds > MAX_RANGE_SECONDS:
                raise self.error("the duration must be between 1s and 3650d", arg)
            return Last(seconds, tok.pos)
        if name in ("take", "limit"):
            arg = self.tok
            if arg.kind != "int":
                raise self.error(f"expected a row count after '{name}', found {self.describe(arg)}")
            self.i += 1
            return Take(int(arg.text), tok.pos)
        raise self.error(f"unknown operator {tok.text!r}; operators: {', '.join(OPERATORS)}", tok)


def parse(text: str) -> Pipeline:
    if not text.strip():
        raise QueryError("the query is empty", hint="e.g. oom_events | last 1h")
    return _Parser(text).parse()
