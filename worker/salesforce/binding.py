"""Parameter binding: `:name` placeholders in SOQL and SOSL become literals escaped for their place.

The statement is written by the admin and passed as given; the only text the worker pastes into
it is a literal produced here, so caller- or chat-typed values can never change the statement.

Places and what they take:
- SOQL comparison value (`Phone = :ani`, `IN (:a, :b)`): string -> 'quoted, escaped', int/float ->
  a plain number, bool -> true/false, null -> null.
- after LIKE: a string only; `%` and `_` in the value are escaped too, so the value matches
  literally.
- after LIMIT / OFFSET: a non-negative integer only.
- typed placeholders `:since:date` / `:since:datetime`: a string in SOQL's date or datetime literal
  form, pasted unquoted (`2024-05-01`, `2024-05-01T10:00:00Z`).
- SOSL search term (`FIND :term` or `FIND {:term}`): a string or number, emitted as one quoted
  phrase `{"..."}` with every SOSL reserved character escaped. The rest of a SOSL statement
  (WHERE inside RETURNING) follows the SOQL rules.
A placeholder with no value, a value of the wrong type for its place, or a placeholder inside a
quoted string (or inside a SOSL `{...}` term next to other text) is refused with BindingError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

from worker.contract import ParamValue


class BindingError(ValueError):
    """The statement and its params do not fit together (-> INVALID_REQUEST)."""


_PLACEHOLDER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)(?::(date|datetime)\b)?")
_DATE = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")
_DATETIME = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,3})?"
    r"(Z|[+-]([01]\d|2[0-3]):?[0-5]\d)"
)
_SOQL_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_LIKE_ESCAPES = {**_SOQL_ESCAPES, "%": "\\%", "_": "\\_"}
SOSL_RESERVED = "?&|!{}[]()^~*:\\\"'+-"
_SOSL_ESCAPES = {
    **{c: "\\" + c for c in SOSL_RESERVED},
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_SOQL_TABLE = str.maketrans(_SOQL_ESCAPES)
_LIKE_TABLE = str.maketrans(_LIKE_ESCAPES)
_SOSL_TABLE = str.maketrans(_SOSL_ESCAPES)


def soql_string(value: str, *, like: bool = False) -> str:
    """A single-quoted SOQL string literal equal to `value` (a LIKE pattern matching it exactly)."""
    return "'" + value.translate(_LIKE_TABLE if like else _SOQL_TABLE) + "'"


def sosl_phrase(value: str) -> str:
    """A SOSL search term `{"..."}` that searches for exactly `value` as one phrase."""
    return '{"' + value.translate(_SOSL_TABLE) + '"}'


def _number(name: str, value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BindingError(f"param {name!r}: {value} is not a finite number")
        return format(Decimal(repr(value)), "f")
    return str(value)


@dataclass(frozen=True)
class _Place:
    like: bool = False
    integer_only: bool = False
    cast: str | None = None


def _soql_literal(name: str, value: ParamValue, place: _Place) -> str:
    if place.cast is not None:
        pattern = _DATE if place.cast == "date" else _DATETIME
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise BindingError(
                f"param {name!r}: :{name}:{place.cast} needs a {place.cast} string "
                + ("like 2024-05-01" if place.cast == "date" else "like 2024-05-01T10:00:00Z")
            )
        return value
    if place.integer_only:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BindingError(f"param {name!r}: LIMIT and OFFSET take a non-negative integer")
        return str(value)
    if place.like:
        if not isinstance(value, str):
            raise BindingError(f"param {name!r}: LIKE takes a string value")
        return soql_string(value, like=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(name, value)
    return soql_string(value)


def _previous_word(text: str, end: int) -> str:
    """The word (letters/underscore) that ends right before `end`, skipping whitespace."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    j = i
    while j > 0 and (text[j - 1].isalnum() or text[j - 1] == "_"):
        j -= 1
    return text[j:i].upper()


def _check_no_placeholder(region: str, params: Mapping[str, ParamValue], where: str) -> None:
    for match in _PLACEHOLDER.finditer(region):
        if match.group(1) in params:
            raise BindingError(
                f"placeholder :{match.group(1)} is inside {where}; "
                "write it bare (the worker adds quotes and escapes)"
            )


# A single-quoted string (escapes honoured; an unterminated one runs to the end), or a
# placeholder: a colon not glued to a word (`LAST_N_DAYS:30`, `10:00` are not placeholders).
_SOQL_TOKEN = re.compile(
    r"'(?:[^'\\]|\\.)*(?:'|\Z)"
    r"|(?<![\w]):([A-Za-z_][A-Za-z0-9_]*)(?::(date|datetime)\b)?",
    re.DOTALL,
)


def _bind_soql_text(text: str, params: Mapping[str, ParamValue]) -> str:
    out: list[str] = []
    last = 0
    for token in _SOQL_TOKEN.finditer(text):
        name, cast = token.group(1), token.group(2)
        if name is None:  # a quoted string: passed as written, never holding a placeholder
            if params:
                _check_no_placeholder(token.group(0), params, "a quoted string")
            continue
        if name not in params:
            raise BindingError(f"placeholder :{name} has no value in params")
        before = _previous_word(text, token.start())
        if before == "IN":
            raise BindingError(
                f"placeholder :{name} after IN: write IN (:a, :b) with one value each"
            )
        place = _Place(like=before == "LIKE", integer_only=before in {"LIMIT", "OFFSET"}, cast=cast)
        out.append(text[last : token.start()])
        out.append(_soql_literal(name, params[name], place))
        last = token.end()
    out.append(text[last:])
    return "".join(out)


def bind_soql(statement: str, params: Mapping[str, ParamValue]) -> str:
    """The SOQL statement with every `:name` placeholder replaced by its escaped literal."""
    return _bind_soql_text(statement, params)


_FIND = re.compile(r"\s*FIND\s*", re.IGNORECASE)


def _brace_end(text: str, start: int) -> int:
    """Index of the unescaped `}` closing the SOSL term that opens at `start` (or -1)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "}":
            return i
        i += 1
    return -1


def _sosl_term(name: str, value: ParamValue) -> str:
    if isinstance(value, bool) or value is None:
        raise BindingError(f"param {name!r}: a SOSL search term takes a string or a number")
    text = _number(name, value) if isinstance(value, int | float) else value
    if not text.strip():
        raise BindingError(f"param {name!r}: the SOSL search term is empty")
    return sosl_phrase(text)


def bind_sosl(statement: str, params: Mapping[str, ParamValue]) -> str:
    """The SOSL statement with its search term and WHERE values bound."""
    find = _FIND.match(statement)
    if not find:
        return _bind_soql_text(statement, params)
    head = statement[: find.end()]
    rest_start = find.end()
    term: str
    if statement.startswith("{", rest_start):
        end = _brace_end(statement, rest_start)
        if end < 0:
            return head + _bind_soql_text(statement[rest_start:], params)
        inner = statement[rest_start + 1 : end].strip()
        match = _PLACEHOLDER.fullmatch(inner)
        if match and match.group(2) is None and match.group(1) in params:
            term = _sosl_term(match.group(1), params[match.group(1)])
        else:
            if match and match.group(1) not in params:
                raise BindingError(f"placeholder :{match.group(1)} has no value in params")
            _check_no_placeholder(inner, params, "the SOSL search term {...}")
            term = statement[rest_start : end + 1]
        tail_start = end + 1
    else:
        match = _PLACEHOLDER.match(statement, rest_start)
        if not match:
            return head + _bind_soql_text(statement[rest_start:], params)
        name = match.group(1)
        if name not in params:
            raise BindingError(f"placeholder :{name} has no value in params")
        if match.group(2) is not None:
            raise BindingError(f"placeholder :{name}: a SOSL search term takes no type")
        term = _sosl_term(name, params[name])
        tail_start = match.end()
    return head + term + _bind_soql_text(statement[tail_start:], params)


_DOT_SEGMENTS = frozenset({".", ".."})


def path_segment(value: str, what: str) -> str:
    """`value` as one segment of a REST path (an external id value, a job id used as one).
    `.` and `..` are refused: URL normalisation would turn them into another resource."""
    if value in _DOT_SEGMENTS:
        raise BindingError(f"{what} must not be {value!r}: it would name another resource")
    return quote(value, safe="")
