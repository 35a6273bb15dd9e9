"""SOQL tokens, string-literal escapes, and Salesforce-style error messages with a caret."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import SfError


class QueryError(SfError):
    """A query Salesforce would reject: answered 400 with `error_code` as the REST errorCode."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(400, error_code, message)


class SoqlError(QueryError):
    """A SOQL query Salesforce would reject (MALFORMED_QUERY, INVALID_FIELD, INVALID_TYPE...)."""


def located(text: str, pos: int, detail: str) -> str:
    """Salesforce's message layout: the offending line, a caret, the row/column, the detail."""
    pos = max(0, min(pos, len(text)))
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    if line_end < 0:
        line_end = len(text)
    row = text.count("\n", 0, pos) + 1
    col = pos - line_start + 1
    line = text[line_start:line_end]
    return f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{detail}"


class Tok(StrEnum):
    IDENT = "ident"
    STRING = "string"
    NUMBER = "number"
    DATE = "date"
    DATETIME = "datetime"
    OP = "op"
    LPAREN = "("
    RPAREN = ")"
    COMMA = ","
    COLON = ":"
    EOF = "<EOF>"


@dataclass(frozen=True)
class Token:
    kind: Tok
    text: str
    pos: int
    # STRING tokens: the unescaped value and, after LIKE, the pattern pieces.
    value: str = ""
    in_like: bool = False
    like_parts: tuple[tuple[str, str], ...] = ()

    def keyword(self) -> str:
        return self.text.upper() if self.kind is Tok.IDENT else ""


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
        (?![\w:.+-])
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:.+-])
  | (?P<baddate>\d{4}-\d{2}-\d{2}[\w:.+-]*)
  | (?P<number>[+-]?\d+(?:\.\d+)?)(?![\w.])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?![\w.])
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<lparen>\() | (?P<rparen>\)) | (?P<comma>,) | (?P<colon>:)
    """,
    re.VERBOSE,
)

_KIND = {
    "datetime": Tok.DATETIME,
    "date": Tok.DATE,
    "number": Tok.NUMBER,
    "ident": Tok.IDENT,
    "op": Tok.OP,
    "lparen": Tok.LPAREN,
    "rparen": Tok.RPAREN,
    "comma": Tok.COMMA,
    "colon": Tok.COLON,
}

SIMPLE_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
}


def tokenize(text: str, start: int = 0, error: type[QueryError] = SoqlError) -> list[Token]:
    code = "MALFORMED_QUERY" if error is SoqlError else "MALFORMED_SEARCH"
    tokens: list[Token] = []
    pos = start
    while pos < len(text):
        if text[pos] == "'":
            in_like = bool(tokens) and tokens[-1].keyword() == "LIKE"
            token = _string(text, pos, in_like, error, code)
            tokens.append(token)
            pos += len(token.text)
            continue
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.lastgroup is None:
            raise error(
                code,
                located(
                    text, pos, f"line 1:{pos} no viable alternative at character '{text[pos]}'"
                ),
            )
        group = match.lastgroup
        if group == "baddate":
            raise error(code, located(text, pos, f"invalid date/time literal: {match.group()}"))
        if group != "ws":
            tokens.append(Token(_KIND[group], match.group(), pos))
        pos = match.end()
    tokens.append(Token(Tok.EOF, "<EOF>", len(text)))
    return tokens


def _string(text: str, start: int, in_like: bool, error: type[QueryError], code: str) -> Token:
    """Scan a single-quoted literal starting at `start` and unescape it."""
    out: list[str] = []
    parts: list[tuple[str, str]] = []
    pos = start + 1
    while True:
        if pos >= len(text):
            raise error(
                code,
                located(
                    text, start, f"line 1:{len(text)} mismatched character '<EOF>' expecting '''"
                ),
            )
        char = text[pos]
        if char == "'":
            break
        if char == "\\":
            nxt = text[pos + 1] if pos + 1 < len(text) else ""
            if nxt in SIMPLE_ESCAPES and nxt:
                out.append(SIMPLE_ESCAPES[nxt])
                parts.append(("lit", SIMPLE_ESCAPES[nxt]))
            elif nxt in ("%", "_") and in_like:
                out.append("\\" + nxt)
                parts.append(("lit", nxt))
            else:
                raw = text[start : min(len(text), pos + 2)]
                raise error(
                    code,
                    located(
                        text,
                        pos,
                        f"Invalid string literal '{raw}'. Illegal character sequence "
                        f"'\\{nxt}' in string literal.",
                    ),
                )
            pos += 2
            continue
        out.append(char)
        if in_like and char == "%":
            parts.append(("any", ""))
        elif in_like and char == "_":
            parts.append(("one", ""))
        else:
            parts.append(("lit", char))
        pos += 1
    return Token(
        Tok.STRING,
        text[start : pos + 1],
        start,
        value="".join(out),
        in_like=in_like,
        like_parts=tuple(parts) if in_like else (),
    )
