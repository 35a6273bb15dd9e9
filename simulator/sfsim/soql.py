"""SOQL subset parser: SELECT fields FROM object [WHERE] [ORDER BY] [LIMIT] [OFFSET].

`parse_soql` checks syntax only; binding to the schema and running happen in soql_eval.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime

from .soql_lexer import QueryError, SoqlError, Tok, Token, located, tokenize

__all__ = [
    "BoolOp",
    "Comparison",
    "Condition",
    "FieldPath",
    "Literal",
    "Not",
    "OrderItem",
    "Parser",
    "SoqlError",
    "SoqlQuery",
    "condition_literals",
    "parse_soql",
]

LiteralKind = typing.Literal[
    "string", "number", "boolean", "null", "date", "datetime", "date_keyword"
]
LiteralValue = str | int | float | bool | None | date | datetime

T = typing.TypeVar("T")

DATE_KEYWORDS = frozenset({"TODAY", "YESTERDAY", "TOMORROW"})
DATE_N_KEYWORDS = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS"})

_RESERVED_WORDS = """SELECT FROM WHERE AND OR NOT IN LIKE ORDER BY LIMIT OFFSET NULLS FIRST LAST
    ASC DESC TRUE FALSE NULL GROUP HAVING INCLUDES EXCLUDES WITH FOR USING TYPEOF WHEN THEN END
    ELSE ROLLUP CUBE"""
RESERVED = frozenset(_RESERVED_WORDS.split())


@dataclass(frozen=True)
class Literal:
    """A literal value in a WHERE clause, as Salesforce understood it."""

    value: LiteralValue
    kind: LiteralKind
    in_like: bool = False
    like_literal_text: str | None = None
    pos: int = 0
    like_pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FieldPath:
    text: str
    pos: int

    @property
    def parts(self) -> list[str]:
        return self.text.split(".")


@dataclass(frozen=True)
class Comparison:
    field: FieldPath
    op: str  # = != < <= > >= LIKE IN NOT IN
    value: Literal | tuple[Literal, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND | OR
    items: tuple[Condition, ...]


Condition = Comparison | Not | BoolOp


@dataclass(frozen=True)
class OrderItem:
    field: FieldPath
    descending: bool = False
    nulls_last: bool = False


@dataclass(frozen=True)
class SoqlQuery:
    text: str
    fields: tuple[FieldPath, ...]
    count: bool
    sobject: str
    sobject_pos: int
    where: Condition | None = None
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None
    offset: int | None = None

    def literals(self) -> list[Literal]:
        return condition_literals(self.where)


def condition_literals(cond: Condition | None) -> list[Literal]:
    return list(_walk(cond)) if cond is not None else []


def _walk(cond: Condition) -> Iterator[Literal]:
    if isinstance(cond, Comparison):
        if isinstance(cond.value, tuple):
            yield from cond.value
        else:
            yield cond.value
    elif isinstance(cond, Not):
        yield from _walk(cond.item)
    else:
        for item in cond.items:
            yield from _walk(item)


def _like_regex(parts: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    pieces = []
    for kind, text in parts:
        pieces.append(".*" if kind == "any" else "." if kind == "one" else re.escape(text))
    return re.compile("".join(pieces), re.IGNORECASE | re.DOTALL)


class Parser:
    """Recursive descent over SOQL tokens; SOSL reuses the field list and WHERE grammar."""

    def __init__(
        self,
        text: str,
        tokens: list[Token],
        error: type[QueryError] = SoqlError,
        code: str = "MALFORMED_QUERY",
    ) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self._error = error
        self._code = code

    # ---- token helpers -----------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at(self, *keywords: str) -> bool:
        return self.peek().keyword() in keywords

    def fail(self, token: Token | None = None, detail: str | None = None) -> QueryError:
        token = token or self.peek()
        return self._error(
            self._code,
            located(self.text, token.pos, detail or f"unexpected token: {token.text}"),
        )

    def expect_keyword(self, keyword: str) -> Token:
        if not self.at(keyword):
            raise self.fail()
        return self.advance()

    def expect(self, kind: Tok) -> Token:
        if self.peek().kind is not kind:
            raise self.fail()
        return self.advance()

    # ---- query -------------------------------------------------------------------------------
    def parse_query(self) -> SoqlQuery:
        self.expect_keyword("SELECT")
        count = False
        fields: tuple[FieldPath, ...] = ()
        if self.at("COUNT") and self.peek(1).kind is Tok.LPAREN:
            self.advance()
            self.advance()
            self.expect(Tok.RPAREN)
            count = True
        else:
            fields = tuple(self.parse_field_list())
        self.expect_keyword("FROM")
        sobject = self.parse_name()
        where = self.parse_where()
        order_by = self.parse_order_by()
        limit = self.parse_int_after("LIMIT")
        offset = self.parse_int_after("OFFSET")
        self.expect(Tok.EOF)
        return SoqlQuery(
            self.text, fields, count, sobject.text, sobject.pos, where, order_by, limit, offset
        )

    def parse_name(self) -> Token:
        token = self.peek()
        if token.kind is not Tok.IDENT or token.keyword() in RESERVED or "." in token.text:
            raise self.fail()
        return self.advance()

    def parse_field(self) -> FieldPath:
        token = self.peek()
        if token.kind is not Tok.IDENT or token.keyword() in RESERVED:
            raise self.fail()
        self.advance()
        return FieldPath(token.text, token.pos)

    def comma_list(self, item: Callable[[], T]) -> list[T]:
        """One or more `item`s separated by commas."""
        items = [item()]
        while self.peek().kind is Tok.COMMA:
            self.advance()
            items.append(item())
        return items

    def parse_field_list(self) -> list[FieldPath]:
        return self.comma_list(self.parse_field)

    def parse_int(self) -> int:
        token = self.peek()
        if token.kind is not Tok.NUMBER or not token.text.isdigit():
            raise self.fail()
        self.advance()
        return int(token.text)

    # ---- optional clauses (absent: None / ()) ------------------------------------------------
    def parse_where(self) -> Condition | None:
        if not self.at("WHERE"):
            return None
        self.advance()
        return self.parse_condition()

    def parse_order_by(self) -> tuple[OrderItem, ...]:
        if not self.at("ORDER"):
            return ()
        self.advance()
        self.expect_keyword("BY")
        return tuple(self.comma_list(self._order_item))

    def parse_int_after(self, keyword: str) -> int | None:
        """`LIMIT n` / `OFFSET n`."""
        if not self.at(keyword):
            return None
        self.advance()
        return self.parse_int()

    def _order_item(self) -> OrderItem:
        path = self.parse_field()
        descending = False
        if self.at("ASC", "DESC"):
            descending = self.advance().keyword() == "DESC"
        nulls_last = descending
        if self.at("NULLS"):
            self.advance()
            if not self.at("FIRST", "LAST"):
                raise self.fail()
            nulls_last = self.advance().keyword() == "LAST"
        return OrderItem(path, descending, nulls_last)

    # ---- conditions --------------------------------------------------------------------------
    def parse_condition(self) -> Condition:
        items = [self._unary()]
        op: str | None = None
        while self.at("AND", "OR"):
            token = self.advance()
            if op is not None and token.keyword() != op:
                raise self.fail(token)
            op = token.keyword()
            items.append(self._unary())
        if op is None:
            return items[0]
        return BoolOp(op, tuple(items))

    def _unary(self) -> Condition:
        if self.at("NOT"):
            self.advance()
            return Not(self._unary())
        if self.peek().kind is Tok.LPAREN:
            self.advance()
            cond = self.parse_condition()
            self.expect(Tok.RPAREN)
            return cond
        return self._comparison()

    def _comparison(self) -> Comparison:
        path = self.parse_field()
        token = self.peek()
        if token.kind is Tok.OP:
            self.advance()
            op = "!=" if token.text == "<>" else token.text
            return Comparison(path, op, self.parse_value())
        keyword = token.keyword()
        if keyword == "LIKE":
            self.advance()
            value = self.peek()
            if value.kind is not Tok.STRING:
                raise self.fail()
            return Comparison(path, "LIKE", self.parse_value())
        if keyword == "IN":
            self.advance()
            return Comparison(path, "IN", self._value_list())
        if keyword == "NOT" and self.peek(1).keyword() == "IN":
            self.advance()
            self.advance()
            return Comparison(path, "NOT IN", self._value_list())
        raise self.fail()

    def _value_list(self) -> tuple[Literal, ...]:
        self.expect(Tok.LPAREN)
        values = self.comma_list(self.parse_value)
        self.expect(Tok.RPAREN)
        return tuple(values)

    def parse_value(self) -> Literal:
        token = self.peek()
        kind = token.kind
        if kind is Tok.STRING:
            self.advance()
            return self._string_literal(token)
        if kind is Tok.NUMBER:
            self.advance()
            number: int | float = float(token.text) if "." in token.text else int(token.text)
            return Literal(number, "number", pos=token.pos)
        if kind is Tok.DATE:
            self.advance()
            try:
                return Literal(date.fromisoformat(token.text), "date", pos=token.pos)
            except ValueError:
                raise self.fail(token, f"invalid date: {token.text}") from None
        if kind is Tok.DATETIME:
            self.advance()
            try:
                moment = datetime.fromisoformat(token.text.replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(token, f"invalid datetime: {token.text}") from None
            return Literal(moment, "datetime", pos=token.pos)
        keyword = token.keyword()
        if keyword in ("TRUE", "FALSE"):
            self.advance()
            return Literal(keyword == "TRUE", "boolean", pos=token.pos)
        if keyword == "NULL":
            self.advance()
            return Literal(None, "null", pos=token.pos)
        if keyword in DATE_KEYWORDS:
            self.advance()
            return Literal(keyword, "date_keyword", pos=token.pos)
        if keyword in DATE_N_KEYWORDS:
            self.advance()
            self.expect(Tok.COLON)
            days = self.parse_int()
            return Literal(f"{keyword}:{days}", "date_keyword", pos=token.pos)
        raise self.fail()

    def _string_literal(self, token: Token) -> Literal:
        if not token.in_like:
            return Literal(token.value, "string", pos=token.pos)
        wildcard = any(kind != "lit" for kind, _ in token.like_parts)
        plain = None if wildcard else "".join(text for _, text in token.like_parts)
        return Literal(
            token.value,
            "string",
            in_like=True,
            like_literal_text=plain,
            pos=token.pos,
            like_pattern=_like_regex(token.like_parts),
        )


def parse_soql(text: str) -> SoqlQuery:
    """Parse one SOQL query (syntax only). Raises SoqlError("MALFORMED_QUERY", ...)."""
    return Parser(text, tokenize(text)).parse_query()
