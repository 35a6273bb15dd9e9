"""SOSL subset parser: FIND {term} [IN ... FIELDS] RETURNING Obj(fields [WHERE ...]) [LIMIT n].

The search term has its own escaping rules; everything after the closing brace reuses the SOQL
tokenizer and the SOQL field-list / WHERE / ORDER BY grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .soql import Condition, FieldPath, Literal, OrderItem, Parser, condition_literals
from .soql_lexer import QueryError, Tok, located, tokenize

__all__ = ["Returning", "SearchTerm", "SoslError", "SoslQuery", "parse_sosl"]

RESERVED_CHARS = frozenset("?&|!{}[]()^~*:\\\"'+-")
CONTROL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
SCOPES = ("ALL", "NAME", "EMAIL", "PHONE")
CODE = "MALFORMED_SEARCH"


class SoslError(QueryError):
    """A SOSL search Salesforce would reject (MALFORMED_SEARCH, INVALID_FIELD, INVALID_TYPE...)."""


@dataclass(frozen=True)
class SearchTerm:
    text: str
    phrase: bool
    wildcard: bool
    negated: bool = False
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    digits: str = ""


@dataclass(frozen=True)
class Returning:
    sobject: str
    pos: int
    fields: tuple[FieldPath, ...] = ()
    where: Condition | None = None
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None


@dataclass(frozen=True)
class SoslQuery:
    text: str
    groups: tuple[tuple[SearchTerm, ...], ...]
    scope: str = "ALL"
    returning: tuple[Returning, ...] = ()
    limit: int | None = None

    @property
    def terms(self) -> list[SearchTerm]:
        return [term for group in self.groups for term in group]

    def literals(self) -> list[Literal]:
        return [lit for spec in self.returning for lit in condition_literals(spec.where)]


# A term unit: one character, and whether it came from an escape (so it is never special).
Unit = tuple[str, bool]


def _fail(text: str, pos: int, detail: str) -> SoslError:
    return SoslError(CODE, located(text, pos, detail))


def _scan_term(text: str, start: int) -> tuple[list[tuple[Unit, int]], int]:
    """Read the braced term starting after `{` at `start`; return units and the end index."""
    units: list[tuple[Unit, int]] = []
    pos = start
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            nxt = text[pos + 1] if pos + 1 < len(text) else ""
            if nxt in CONTROL_ESCAPES:
                units.append(((CONTROL_ESCAPES[nxt], True), pos))
            elif nxt and nxt in RESERVED_CHARS:
                units.append(((nxt, True), pos))
            else:
                raise _fail(text, pos, f"Invalid escape sequence '\\{nxt}' in search term")
            pos += 2
            continue
        if char == "}":
            return units, pos + 1
        if char == "{":
            raise _fail(text, pos, "unexpected '{' in search term: escape it as '\\{'")
        units.append(((char, False), pos))
        pos += 1
    raise _fail(text, len(text), "missing '}' after the search term")


def _split(text: str, units: list[tuple[Unit, int]]) -> list[tuple[list[Unit], bool, int]]:
    """Group units into words and double-quoted phrases: (units, is_phrase, pos)."""
    chunks: list[tuple[list[Unit], bool, int]] = []
    current: list[Unit] = []
    current_pos = 0
    index = 0
    while index < len(units):
        (char, escaped), pos = units[index]
        if not escaped and char == '"':
            if current:
                chunks.append((current, False, current_pos))
                current = []
            end = index + 1
            while end < len(units) and units[end][0] != ('"', False):
                end += 1
            if end >= len(units):
                raise _fail(text, pos, "unterminated phrase in search term")
            chunks.append(([u for u, _ in units[index + 1 : end]], True, pos))
            index = end + 1
            continue
        if not escaped and char.isspace():
            if current:
                chunks.append((current, False, current_pos))
                current = []
        else:
            if not current:
                current_pos = pos
            current.append((char, escaped))
        index += 1
    if current:
        chunks.append((current, False, current_pos))
    return chunks


def _term(text: str, units: list[Unit], phrase: bool, pos: int, negated: bool) -> SearchTerm:
    pieces: list[str] = []
    wildcard = False
    for char, escaped in units:
        if not escaped and char in ("*", "?"):
            wildcard = True
            pieces.append(".*" if char == "*" else ".")
        elif not escaped and char in RESERVED_CHARS:
            raise _fail(
                text, pos, f"reserved character '{char}' in search term must be escaped with '\\'"
            )
        else:
            pieces.append(re.escape(char))
    plain = "".join(c for c, esc in units if esc or c not in ("*", "?"))
    return SearchTerm(
        text="".join(c for c, _ in units),
        phrase=phrase,
        wildcard=wildcard,
        negated=negated,
        pattern=re.compile("".join(pieces), re.IGNORECASE | re.DOTALL),
        digits="".join(c for c in plain if c.isdigit()),
    )


def _parse_terms(text: str, units: list[tuple[Unit, int]]) -> tuple[tuple[SearchTerm, ...], ...]:
    groups: list[list[SearchTerm]] = [[]]
    pending: str | None = None  # operator waiting for its right-hand term
    for chunk, phrase, pos in _split(text, units):
        word = "".join(c for c, _ in chunk)
        is_plain = not phrase and all(not esc for _, esc in chunk)
        op = word.upper() if is_plain and word.upper() in ("AND", "OR", "NOT") else None
        if op is not None:
            valid = (op in ("AND", "OR") and pending is None and bool(groups[-1])) or (
                op == "NOT" and pending == "AND"
            )
            if not valid:
                raise _fail(text, pos, f"unexpected operator {word} in search term")
            pending = "AND NOT" if op == "NOT" else op
            continue
        if pending == "OR":
            groups.append([])
        groups[-1].append(_term(text, chunk, phrase, pos, negated=pending == "AND NOT"))
        pending = None
    if pending is not None or not groups[-1]:
        end = units[-1][1] if units else 0
        raise _fail(text, end, "search term is incomplete")
    significant = sum(
        1 for group in groups for t in group for c in _plain_chars(t) if not c.isspace()
    )
    if significant < 2:
        raise _fail(text, units[0][1], "search term must be longer than one character")
    return tuple(tuple(group) for group in groups)


def _plain_chars(term: SearchTerm) -> str:
    if not term.wildcard:
        return term.text
    return term.text.replace("*", "").replace("?", "")


_FIND_RE = re.compile(r"\s*FIND\s*", re.IGNORECASE)


def parse_sosl(text: str) -> SoslQuery:
    """Parse one SOSL search. Raises SoslError("MALFORMED_SEARCH", ...)."""
    match = _FIND_RE.match(text)
    if match is None:
        raise _fail(text, 0, "unexpected token: the search must start with FIND")
    brace = match.end()
    if brace >= len(text) or text[brace] != "{":
        raise _fail(
            text, brace, "No search term found. The search term must be enclosed in braces."
        )
    units, end = _scan_term(text, brace + 1)
    if not units:
        raise _fail(text, brace, "search term must be longer than one character")
    groups = _parse_terms(text, units)
    parser = Parser(text, tokenize(text, end, SoslError), SoslError, CODE)
    scope = "ALL"
    if parser.at("IN"):
        parser.advance()
        if not parser.at(*SCOPES):
            raise parser.fail()
        scope = parser.advance().keyword()
        parser.expect_keyword("FIELDS")
    returning: list[Returning] = []
    if parser.at("RETURNING"):
        parser.advance()
        returning = parser.comma_list(lambda: _returning(parser))
    limit = parser.parse_int_after("LIMIT")
    parser.expect(Tok.EOF)
    return SoslQuery(text, groups, scope, tuple(returning), limit)


def _returning(parser: Parser) -> Returning:
    name = parser.parse_name()
    if parser.peek().kind is not Tok.LPAREN:
        return Returning(name.text, name.pos)
    parser.advance()
    fields = tuple(parser.parse_field_list())
    where = parser.parse_where()
    order_by = parser.parse_order_by()
    limit = parser.parse_int_after("LIMIT")
    parser.expect(Tok.RPAREN)
    return Returning(name.text, name.pos, fields, where, order_by, limit)
