"""The pxo query language: a pipe of operators after a table name (the
family of Kusto KQL and Pixie PxL). The reference is docs/query-language.md.

    oom_events | last 1h
    oom_events | last 24h | where namespace == "prod" and comm =~ "java.*"
               | summarize kills = count() by pod | top 10 by kills

Grammar:

    query     := table ( "|" operator )*
    operator  := "last" DURATION | "since" TIME | "between" TIME "and" TIME
               | "where" expr
               | "project" item ("," item)*          item := name [ "=" expr ]
               | "project-away" name ("," name)*
               | "extend" name "=" expr ("," name "=" expr)*
               | "summarize" [item ("," item)*] ["by" item ("," item)*]
               | ("sort" | "order") "by" expr ["asc" | "desc"] ("," ...)*
               | ("take" | "limit") INT
               | "top" INT "by" expr ["asc" | "desc"]
               | "distinct" ("*" | name ("," name)*)
    expr      := or;  or := and ("or" and)*;  and := not ("and" not)*
    not       := "not" not | cmp
    cmp       := sum [ ("==" | "!=" | "<" | "<=" | ">" | ">=") sum | "=~" STRING
                     | ("in" | "!in") "(" expr ("," expr)* ")" | ("contains" | "!contains") sum ]
    sum       := prod (("+" | "-") prod)*;  prod := unary (("*" | "/" | "%") unary)*
    unary     := "-" unary | atom
    atom      := literal | name | name "(" [expr ("," expr)*] ")" | "(" expr ")"
    literal   := INT | FLOAT | STRING | DURATION (30s) | BYTES (512MiB) | TIME
               | true | false | null

This module only parses: names of tables, columns and functions are checked
by the planner against the catalog. Every node keeps its 0-based offset, so
an error can point at the column.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field

from pxo.collector.errors import QueryError
from pxo.common.contract import MAX_QUERY_CHARS

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BYTE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
               "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
MAX_RANGE_SECONDS = 3650 * 86400
MAX_DEPTH = 64  # nesting of parentheses and operators an expression may have

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<time>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}:\d{2})?(?![\w.]))
  | (?P<bytes>\d+(?:\.\d+)?(?:KiB|MiB|GiB|TiB|KB|MB|GB|TB|B)\b)
  | (?P<duration>\d+(?:\.\d+)?(?:ms|s|m|h|d|w)\b)
  | (?P<float>\d+\.\d+(?:[eE][+-]?\d+)?\b)
  | (?P<int>\d+\b)
  | (?P<numword>\d[\w.]*)
  | (?P<kw>(?i:project-away)\b)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<op>==|!=|<=|>=|=~|!in\b|!contains\b|[<>=()\[\],+\-*/%|])
    """,
    re.VERBOSE,
)

KEYWORDS = frozenset(["and", "or", "not", "in", "contains", "by", "asc", "desc", "true", "false", "null"])
OPERATORS = ("where", "project", "project-away", "extend", "summarize", "sort", "order", "take", "limit",
             "top", "distinct", "last", "since", "between")


@dataclass(frozen=True)
class Token:
    kind: str  # time, bytes, duration, float, int, numword (a number with a bad unit), kw, ident, string, op, end
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] in "\"'":
                raise QueryError.at(text, pos, "unterminated string", hint="close it on the same line")
            raise QueryError.at(text, pos, f"unexpected character {text[pos]!r}")
        if m.lastgroup in ("int", "float", "bytes", "duration") and len(m.group()) > 40:
            raise QueryError.at(text, pos, "the number is too long")
        if m.lastgroup != "ws":
            tokens.append(Token(m.lastgroup or "", m.group(), pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# -- expressions ---------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    """A literal: kind is str, int, float, bool, null, duration (value: microseconds) or time."""

    kind: str
    value: object
    pos: int
    source: str = field(default="", compare=False)  # as written (1TiB, 5m, "a\"b")


@dataclass(frozen=True)
class Col:
    name: str
    pos: int


@dataclass(frozen=True)
class Call:
    name: str  # lower case
    args: tuple[Expr, ...]
    pos: int


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "not"
    operand: Expr
    pos: int


@dataclass(frozen=True)
class Binary:
    op: str  # and or == != < <= > >= =~ contains !contains + - * / %
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True)
class InList:
    operand: Expr
    items: tuple[Expr, ...]
    negate: bool
    pos: int


Expr = Lit | Col | Call | Unary | Binary | InList


# -- operators -----------------------------------------------------------------


@dataclass(frozen=True)
class Last:
    seconds: int
    pos: int


@dataclass(frozen=True)
class Since:
    start: dt.datetime  # UTC, naive
    pos: int


@dataclass(frozen=True)
class Between:
    start: dt.datetime
    end: dt.datetime
    pos: int


@dataclass(frozen=True)
class Take:
    count: int
    pos: int


@dataclass(frozen=True)
class Where:
    predicate: Expr
    pos: int


@dataclass(frozen=True)
class Item:
    """``name = expr`` or a bare expression (name None: the planner names it)."""

    name: str | None
    expr: Expr
    pos: int


@dataclass(frozen=True)
class Project:
    items: tuple[Item, ...]
    pos: int


@dataclass(frozen=True)
class ProjectAway:
    names: tuple[Col, ...]
    pos: int


@dataclass(frozen=True)
class Extend:
    items: tuple[Item, ...]
    pos: int


@dataclass(frozen=True)
class Summarize:
    aggs: tuple[Item, ...]
    keys: tuple[Item, ...]
    pos: int


@dataclass(frozen=True)
class SortKey:
    expr: Expr
    desc: bool


@dataclass(frozen=True)
class Sort:
    keys: tuple[SortKey, ...]
    pos: int


@dataclass(frozen=True)
class Top:
    count: int
    key: SortKey
    pos: int


@dataclass(frozen=True)
class Distinct:
    names: tuple[Col, ...]  # empty: every column (distinct *)
    pos: int


RangeOp = Last | Since | Between
Op = Last | Since | Between | Take | Where | Project | ProjectAway | Extend | Summarize | Sort | Top | Distinct


@dataclass
class Pipeline:
    table: str
    table_pos: int
    ops: list[Op] = field(default_factory=list)

    @property
    def range_op(self) -> RangeOp | None:
        ranges = [op for op in self.ops if isinstance(op, Last | Since | Between)]
        return ranges[0] if ranges else None


def parse_time(text: str) -> dt.datetime:
    """An ISO date or date-time; without an offset it is UTC. Returned as naive UTC."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token | None = None, hint: str = "") -> QueryError:
        tok = tok or self.tok
        return QueryError.at(self.text, tok.pos, message, hint)

    def describe(self, tok: Token) -> str:
        return "the end of the query" if tok.kind == "end" else repr(tok.text)

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text.lower() in words

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def expect_op(self, op: str, what: str = "") -> Token:
        if not self.is_op(op):
            raise self.error(f"expected '{op}'{what}, found {self.describe(self.tok)}")
        return self.next()

    def expect_word(self, word: str, after: str) -> None:
        if not self.is_word(word):
            raise self.error(f"expected '{word}' after '{after}', found {self.describe(self.tok)}")
        self.next()

    def next(self) -> Token:
        tok = self.tok
        self.i += 1
        return tok

    # -- the pipeline ----------------------------------------------------------

    def parse(self) -> Pipeline:
        if self.tok.kind != "ident":
            raise self.error(f"expected a table name, found {self.describe(self.tok)}",
                             hint="a query starts with a table, e.g. oom_events | last 1h")
        pipeline = Pipeline(self.tok.text, self.tok.pos)
        self.i += 1
        while self.is_op("|"):
            self.i += 1
            pipeline.ops.append(self.operator())
        if self.tok.kind != "end":
            raise self.error(f"expected '|' or the end of the query, found {self.describe(self.tok)}")
        ranges = [op for op in pipeline.ops if isinstance(op, Last | Since | Between)]
        if len(ranges) > 1:
            raise QueryError.at(self.text, ranges[1].pos, "the time range is given twice ('last', 'since' "
                                "or 'between')")
        return pipeline

    def operator(self) -> Op:
        tok = self.tok
        if tok.kind == "kw":
            self.next()
            return ProjectAway(tuple(self.names("project-away")), tok.pos)
        if tok.kind != "ident":
            raise self.error(f"expected an operator ({', '.join(OPERATORS)}), found {self.describe(tok)}")
        name = tok.text.lower()
        handler = getattr(self, f"op_{name}", None)
        if handler is None:
            raise self.error(f"unknown operator {tok.text!r}; operators: {', '.join(OPERATORS)}", tok,
                             hint=_did_you_mean(name, OPERATORS))
        self.next()
        op: Op = handler(tok)
        return op

    def op_last(self, tok: Token) -> Last:
        arg = self.tok
        if arg.kind != "duration":
            raise self.error(f"expected a duration after 'last' (e.g. 30s, 15m, 1h, 7d, 2w), "
                             f"found {self.describe(arg)}")
        self.next()
        seconds = _duration_us(arg.text) / 1e6
        if seconds < 1 or seconds > MAX_RANGE_SECONDS or seconds != int(seconds):
            raise self.error("the duration must be a whole number of seconds between 1s and 3650d", arg)
        return Last(int(seconds), tok.pos)

    def time_arg(self, after: str) -> dt.datetime:
        arg = self.tok
        if arg.kind not in ("time", "string"):
            raise self.error(f"expected a time after '{after}' (e.g. 2026-11-24T08:00:00Z), "
                             f"found {self.describe(arg)}")
        self.next()
        try:
            return parse_time(arg.text if arg.kind == "time" else _unescape(arg.text[1:-1]))
        except ValueError:
            raise self.error(f"{arg.text} is not a time; write e.g. 2026-11-24T08:00:00Z", arg) from None

    def op_since(self, tok: Token) -> Since:
        return Since(self.time_arg("since"), tok.pos)

    def op_between(self, tok: Token) -> Between:
        start = self.time_arg("between")
        self.expect_word("and", "between <time>")
        end_tok = self.tok
        end = self.time_arg("and")
        if end <= start:
            raise self.error("the end of the range must be after its start", end_tok)
        return Between(start, end, tok.pos)

    def count_arg(self, name: str) -> int:
        arg = self.tok
        if arg.kind != "int":
            raise self.error(f"expected a row count after '{name}', found {self.describe(arg)}")
        self.next()
        n = int(arg.text)
        if n > 1 << 62:
            raise self.error("the row count is too large", arg)
        return n

    def op_take(self, tok: Token) -> Take:
        return Take(self.count_arg(tok.text.lower()), tok.pos)

    op_limit = op_take

    def op_where(self, tok: Token) -> Where:
        return Where(self.expr(), tok.pos)

    def names(self, after: str) -> list[Col]:
        out = []
        while True:
            if self.tok.kind != "ident" or self.tok.text.lower() in KEYWORDS:
                raise self.error(f"expected a column name after '{after}', found {self.describe(self.tok)}")
            out.append(Col(self.tok.text, self.tok.pos))
            self.next()
            if not self.is_op(","):
                return out
            self.next()

    def item(self, *, named: bool) -> Item:
        tok = self.tok
        if tok.kind == "ident" and tok.text.lower() not in KEYWORDS and self.tokens[self.i + 1].text == "=" \
                and self.tokens[self.i + 1].kind == "op":
            self.i += 2
            return Item(tok.text, self.expr(), tok.pos)
        if named:
            raise self.error(f"expected 'name = expression', found {self.describe(tok)}")
        return Item(None, self.expr(), tok.pos)

    def items(self, *, named: bool) -> list[Item]:
        out = [self.item(named=named)]
        while self.is_op(","):
            self.next()
            out.append(self.item(named=named))
        return out

    def op_project(self, tok: Token) -> Project:
        return Project(tuple(self.items(named=False)), tok.pos)

    def op_extend(self, tok: Token) -> Extend:
        return Extend(tuple(self.items(named=True)), tok.pos)

    def op_summarize(self, tok: Token) -> Summarize:
        aggs: list[Item] = []
        keys: list[Item] = []
        if not self.is_word("by"):
            aggs = self.items(named=False)
        if self.is_word("by"):
            self.next()
            keys = self.items(named=False)
        if not aggs and not keys:
            raise self.error("expected an aggregation (e.g. count()) or 'by' after 'summarize', "
                             f"found {self.describe(self.tok)}")
        return Summarize(tuple(aggs), tuple(keys), tok.pos)

    def sort_key(self) -> SortKey:
        e = self.expr()
        desc = True  # as in Kusto: sort by and top are descending unless told
        if self.is_word("asc", "desc"):
            desc = self.next().text.lower() == "desc"
        return SortKey(e, desc)

    def op_sort(self, tok: Token) -> Sort:
        self.expect_word("by", tok.text.lower())
        keys = [self.sort_key()]
        while self.is_op(","):
            self.next()
            keys.append(self.sort_key())
        return Sort(tuple(keys), tok.pos)

    op_order = op_sort

    def op_top(self, tok: Token) -> Top:
        n = self.count_arg("top")
        self.expect_word("by", "top N")
        return Top(n, self.sort_key(), tok.pos)

    def op_distinct(self, tok: Token) -> Distinct:
        if self.is_op("*"):
            self.next()
            return Distinct((), tok.pos)
        return Distinct(tuple(self.names("distinct")), tok.pos)

    # -- expressions -----------------------------------------------------------

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Expr:
        left = self.and_()
        while self.is_word("or"):
            tok = self.next()
            left = Binary("or", left, self.and_(), tok.pos)
        return left

    def and_(self) -> Expr:
        left = self.not_()
        while self.is_word("and"):
            tok = self.next()
            left = Binary("and", left, self.not_(), tok.pos)
        return left

    def not_(self) -> Expr:
        if self.is_word("not"):  # not(x) is `not (x)`: the same thing
            tok = self.next()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
            try:
                return Unary("not", self.not_(), tok.pos)
            finally:
                self.depth -= 1
        return self.cmp()

    def cmp(self) -> Expr:
        left = self.sum_()
        tok = self.tok
        if self.is_op("==", "!=", "<", "<=", ">", ">="):
            self.next()
            return Binary(tok.text, left, self.sum_(), tok.pos)
        if self.is_op("=~"):
            self.next()
            pat = self.tok
            if pat.kind != "string":
                raise self.error(f"expected a regular expression in quotes after '=~', found {self.describe(pat)}")
            return Binary("=~", left, self.atom(), tok.pos)
        if self.is_word("in") or self.is_op("!in"):
            self.next()
            self.expect_op("(", f" after '{tok.text}'")
            items = [self.expr()]
            while self.is_op(","):
                self.next()
                items.append(self.expr())
            self.expect_op(")", " to close the list")
            return InList(left, tuple(items), tok.text == "!in", tok.pos)
        if self.is_word("contains") or self.is_op("!contains"):
            self.next()
            return Binary(tok.text.lower(), left, self.sum_(), tok.pos)
        return left

    def sum_(self) -> Expr:
        left = self.prod()
        while self.is_op("+", "-"):
            tok = self.next()
            left = Binary(tok.text, left, self.prod(), tok.pos)
        return left

    def prod(self) -> Expr:
        left = self.unary()
        while self.is_op("*", "/", "%"):
            tok = self.next()
            left = Binary(tok.text, left, self.unary(), tok.pos)
        return left

    def unary(self) -> Expr:
        if self.is_op("-"):
            tok = self.next()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"the expression is nested too deeply (more than {MAX_DEPTH} levels)")
            try:
                return Unary("-", self.unary(), tok.pos)
            finally:
                self.depth -= 1
        return self.atom()

    def atom(self) -> Expr:
        tok = self.tok
        kind = tok.kind
        if kind == "int":
            self.next()
            return Lit("int", int(tok.text), tok.pos, tok.text)
        if kind == "float":
            self.next()
            value = float(tok.text)
            if not math.isfinite(value):
                raise self.error(f"{tok.text} is not a finite number", tok)
            return Lit("float", value, tok.pos, tok.text)
        if kind == "bytes":
            self.next()
            unit = re.search(r"[A-Za-z]+$", tok.text)
            assert unit is not None
            number, scale = tok.text[:unit.start()], _BYTE_UNITS[unit.group()]
            if "." not in number:
                return Lit("int", int(number) * scale, tok.pos, tok.text)
            value = float(number) * scale
            if value != int(value):
                raise self.error(f"{tok.text} is not a whole number of bytes", tok)
            return Lit("int", int(value), tok.pos, tok.text)
        if kind == "duration":
            self.next()
            return Lit("duration", _duration_us(tok.text), tok.pos, tok.text)
        if kind == "time":
            self.next()
            try:
                return Lit("time", parse_time(tok.text), tok.pos, tok.text)
            except ValueError:
                raise self.error(f"{tok.text} is not a time", tok) from None
        if kind == "string":
            self.next()
            text = _unescape(tok.text[1:-1])
            if "\x00" in text:
                raise self.error("a string may not contain a NUL character", tok)
            return Lit("str", text, tok.pos, tok.text)
        if kind == "numword":
            raise self.error(f"{tok.text!r} is not a number: durations end in ms, s, m, h, d or w "
                             "(30s), sizes in B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (512MiB)", tok)
        if self.is_op("("):
            self.next()
            e = self.expr()
            self.expect_op(")", " to close '('")
            return e
        if kind == "ident":
            word = tok.text.lower()
            if word in ("true", "false"):
                self.next()
                return Lit("bool", word == "true", tok.pos, tok.text)
            if word == "null":
                self.next()
                return Lit("null", None, tok.pos, tok.text)
            if word in KEYWORDS:
                raise self.error(f"expected an expression, found the keyword {tok.text!r}", tok)
            self.next()
            if self.is_op("("):
                self.next()
                args: list[Expr] = []
                if not self.is_op(")"):
                    args.append(self.expr())
                    while self.is_op(","):
                        self.next()
                        args.append(self.expr())
                self.expect_op(")", f" to close {tok.text}(")
                return Call(word, tuple(args), tok.pos)
            return Col(tok.text, tok.pos)
        raise self.error(f"expected an expression (a column, a value or a function), found {self.describe(tok)}")


def _duration_us(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text)
    assert m is not None
    number, unit = m.groups()
    if "." not in number:
        return int(number) * int(_UNITS[unit] * 1_000_000)
    return round(float(number) * _UNITS[unit] * 1_000_000)


def _did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]}?" if close else ""


_PRECEDENCE = {"or": 1, "and": 2, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4, "=~": 4, "contains": 4,
               "!contains": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}


def unparse(e: Expr, outer: int = 0) -> str:
    """``e`` written in the language again (for messages that name an expression)."""
    if isinstance(e, Lit):
        if e.source:
            return e.source
        if e.kind == "str":
            return '"' + str(e.value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if e.kind == "null":
            return "null"
        if e.kind == "bool":
            return "true" if e.value else "false"
        if e.kind == "duration":
            return f"{int(e.value) / 1e6:g}s"  # type: ignore[call-overload]
        if e.kind == "time":
            return f"{e.value:%Y-%m-%dT%H:%M:%S}Z"
        return str(e.value)
    if isinstance(e, Col):
        return e.name
    if isinstance(e, Call):
        return f"{e.name}({', '.join(unparse(a) for a in e.args)})"
    if isinstance(e, InList):
        items = ", ".join(unparse(i) for i in e.items)
        text = f"{unparse(e.operand, 4)} {'!in' if e.negate else 'in'} ({items})"
        return f"({text})" if outer > 4 else text
    if isinstance(e, Unary):
        text = f"not {unparse(e.operand, 3)}" if e.op == "not" else f"-{unparse(e.operand, 7)}"
        return f"({text})" if outer > (3 if e.op == "not" else 7) else text
    level = _PRECEDENCE[e.op]
    text = f"{unparse(e.left, level)} {e.op} {unparse(e.right, level + 1)}"
    return f"({text})" if outer > level else text


def parse(text: str) -> Pipeline:
    if not text.strip():
        raise QueryError("the query is empty", hint="e.g. oom_events | last 1h")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    return _Parser(text).parse()
