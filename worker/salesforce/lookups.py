"""One query for many lookups: SOQL searches of one account that differ only in the value of one
equality condition on one field (`SELECT Id, Name FROM Contact WHERE Phone = '+1 415 ...'`)
travel as one query with `Phone IN (...)`, and the answer is split back, job by job.

Only shapes whose split is provably what each job would get alone are merged:
- `SELECT f, g, ... FROM Object WHERE c1 AND c2 AND ...` with plain fields (no function,
  aggregate, subquery, TYPEOF), no ORDER BY / LIMIT / OFFSET / GROUP BY / HAVING / FOR / WITH /
  USING, no OR at the top of the WHERE, no SELECT inside it (semi-joins);
- the varying condition is one of the top-level conjuncts, `Field = 'text'` on a field of the
  object itself (no relationship path); every other byte of the statement is the same;
- the value is plain ASCII, not empty, and (for the `Id` field) a valid id: ASCII is where every
  case-insensitive comparison agrees, so the split compares the way Salesforce does;
- the merged statement stays within MAX_VALUES values and MAX_STATEMENT characters (SOQL allows
  100,000 characters and a GET URI about 16,000: the bound keeps well below both).
The field is added to the SELECT list when the job did not select it, and removed again from
each record, so records are exactly what the job alone gets.

Splitting (`split`): a record belongs to a job when its field equals the job's value as
Salesforce compares: text case-insensitively, ids in their 15- and 18-character forms alike, a
null never. A field other than `Id` may be text or an id (the worker has no schema): the split is
used only when both rules give the same answer for every record and value, and every record the
merged query returned belongs to at least one job. Otherwise, and whenever the merged answer is
not one complete page of records, the split is refused and each job runs alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from worker.salesforce.binding import soql_string
from worker.salesforce.ids import canonical_id

MAX_VALUES = 100
MAX_STATEMENT = 8000  # characters of the merged statement, URL-encoded
MERGED_BATCH = 2000  # the page size asked for the merged query (Salesforce's maximum)

_TOKEN = re.compile(
    r"\s+|(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<>|<=|>=|=|<|>)|(?P<punct>[(),])"
    r"|(?P<word>[^\s'(),=<>!]+)",
    re.DOTALL,
)
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_REFUSED_WORDS = frozenset(
    [
        "ORDER",
        "LIMIT",
        "OFFSET",
        "GROUP",
        "HAVING",
        "FOR",
        "WITH",
        "USING",
        "SELECT",
        "TYPEOF",
        "UPDATE",
        "VIEW",
        "REFERENCE",
        "TRACKING",
        "ALL",
        "ROWS",
        "FIELDS",
        "OR",
    ]
)
_SELECT_REFUSED = frozenset(
    ["TYPEOF", "FIELDS", "COUNT", "DISTANCE", "FORMAT", "TOLABEL", "CONVERTCURRENCY"]
)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Lookup:
    """A statement seen as `template` with one value in the hole: the key of its shape, the
    field, the value, and how to write the merged statement."""

    key: str  # same key: same statement but for the value
    field: str
    value: str
    head: str  # the statement before the condition, the field added to SELECT when missing
    tail: str  # the statement after the condition
    added: bool  # the field was added to the SELECT list (strip it from the records)

    def merged(self, values: list[str]) -> str:
        literals = ", ".join(soql_string(v) for v in values)
        return f"{self.head}{self.field} IN ({literals}){self.tail}"


def _tokens(text: str) -> list[_Tok] | None:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            return None  # an unterminated string, a lone `!`
        kind = match.lastgroup
        if kind is not None:
            out.append(_Tok(kind, match.group(), match.start(), match.end()))
        pos = match.end()
    return out


def _decode(literal: str) -> str | None:
    """The value of a SOQL string literal, or None for an escape whose meaning is not plain."""
    out: list[str] = []
    i, inner = 0, literal[1:-1]
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            meaning = _ESCAPES.get(inner[i + 1 : i + 2])
            if meaning is None:
                return None
            out.append(meaning)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _batchable(field: str, value: str) -> bool:
    if not value or not value.isascii():
        return False
    return field.lower() != "id" or canonical_id(value) is not None


def lookups(statement: str) -> list[Lookup]:
    """Every way `statement` can be seen as a lookup to merge (one per eligible condition)."""
    toks = _tokens(statement)
    if not toks or len(toks) < 6 or toks[0].text.upper() != "SELECT":
        return []
    i, selected = 1, []
    while True:
        tok = toks[i] if i < len(toks) else None
        if tok is None or tok.kind != "word" or not _PATH.fullmatch(tok.text):
            return []
        if tok.text.upper() in _SELECT_REFUSED:
            return []
        selected.append(tok)
        i += 1
        if i < len(toks) and toks[i].text == ",":
            i += 1
            continue
        break
    if i + 2 >= len(toks) or toks[i].text.upper() != "FROM":
        return []
    if not _FIELD.fullmatch(toks[i + 1].text) or toks[i + 2].text.upper() != "WHERE":
        return []
    where = toks[i + 3 :]
    conjuncts: list[list[_Tok]] = [[]]
    depth = 0
    for tok in where:
        upper = tok.text.upper() if tok.kind == "word" else ""
        if upper in _REFUSED_WORDS and (depth == 0 or upper in ("SELECT", "ORDER", "LIMIT")):
            return []
        depth += {"(": 1, ")": -1}.get(tok.text, 0) if tok.kind == "punct" else 0
        if depth < 0:
            return []
        if depth == 0 and upper == "AND":
            conjuncts.append([])
        else:
            conjuncts[-1].append(tok)
    if depth != 0 or any(not c for c in conjuncts):
        return []
    names = {t.text.lower() for t in selected}
    last_selected = selected[-1]
    found: list[Lookup] = []
    for conjunct in conjuncts:
        if len(conjunct) != 3:
            continue
        field, op, lit = conjunct
        if op.text != "=" or lit.kind != "str" or not _FIELD.fullmatch(field.text):
            continue
        value = _decode(lit.text)
        if value is None or not _batchable(field.text, value):
            continue
        added = field.text.lower() not in names
        before = statement[: field.start]
        if added:
            cut = last_selected.end
            before = f"{statement[:cut]}, {field.text}{statement[cut : field.start]}"
        key = f"{statement[: lit.start]}\x00{statement[lit.end :]}"
        found.append(Lookup(key, field.text, value, before, statement[lit.end :], added))
    return found


def fits(lookup: Lookup, values: list[str], resource: str) -> bool:
    """Would the merged statement of `values` stay within the bounds? Written from the whole
    statement: the reference `fits_length` (what merging.Unit asks) is tested against."""
    if len(values) > MAX_VALUES:
        return False
    return len(resource) + len(quote(lookup.merged(values), safe="")) <= MAX_STATEMENT


# `fits` by lengths, for a statement built one value at a time (merging.Unit): URL-encoding
# encodes each character on its own, so the encoded statement's length is the sum of its parts'.
SEPARATOR_LENGTH = len(quote(", ", safe=""))


def literal_length(value: str) -> int:
    """The URL-encoded length of the value's SOQL literal."""
    return len(quote(soql_string(value), safe=""))


def fits_length(lookup: Lookup, count: int, literals: int, resource: str) -> bool:
    """`fits` for `count` values whose literals, joined by ", ", encode to `literals` characters."""
    if count > MAX_VALUES:
        return False
    frame = len(quote(f"{lookup.head}{lookup.field} IN (", safe="")) + len(
        quote(f"){lookup.tail}", safe="")
    )
    return len(resource) + frame + literals <= MAX_STATEMENT


def _matches(field: str, stored: Any, value: str) -> bool | None:
    """Does a record's stored value equal `value` as Salesforce compares? None when it depends
    on whether the field is text or an id (the split is then refused)."""
    return _Wanted.of(value).matches(field.lower() == "id", _Stored.of(stored))


@dataclass(frozen=True, slots=True)
class _Stored:
    """A record's value as the comparisons need it, worked out once per record."""

    text: str | None  # lower-cased, when it is ASCII text (else no text equality)
    id: str | None  # its canonical 18-character id, when it is one

    @classmethod
    def of(cls, stored: Any) -> _Stored | None:
        """None: not a string (a null never matches; a number is not a text field's value)."""
        if not isinstance(stored, str):
            return None
        return cls(stored.lower() if stored.isascii() else None, canonical_id(stored))


@dataclass(frozen=True, slots=True)
class _Wanted:
    """A looked-up value as the comparisons need it, worked out once per value."""

    text: str  # lower-cased
    id: str | None  # its canonical 18-character id, when it is one

    @classmethod
    def of(cls, value: str) -> _Wanted:
        return cls(value.lower(), canonical_id(value))

    def matches(self, id_field: bool, stored: _Stored | None) -> bool | None:
        if stored is None:
            return False
        as_id = self.id is not None and self.id == stored.id
        if id_field:
            return as_id
        as_text = stored.text is not None and stored.text == self.text
        if self.id is None:  # not an id: the field is not an id field (Salesforce would refuse it)
            return as_text
        return as_text if as_text == as_id else None


def _field_key(record: dict[str, Any], field: str) -> str | None:
    lowered = field.lower()
    return next((k for k in record if k != "attributes" and k.lower() == lowered), None)


def split(lookup: Lookup, values: list[str], body: Any) -> list[dict[str, Any]] | None:
    """Each value's answer out of the merged query's answer (a body with `totalSize`, `done`,
    `records`, as Salesforce answers one job's query that fits in one page), in the order of
    `values`; None when the answer cannot be split provably right."""
    if not isinstance(body, dict) or body.get("done") is not True or body.get("nextRecordsUrl"):
        return None
    records = body.get("records")
    if not isinstance(records, list) or body.get("totalSize") != len(records):
        return None
    shares: list[list[dict[str, Any]]] = [[] for _ in values]
    wanted = [_Wanted.of(value) for value in values]
    id_field = lookup.field.lower() == "id"
    for record in records:
        key = _field_key(record, lookup.field) if isinstance(record, dict) else None
        if key is None:
            return None
        stored = _Stored.of(record[key])
        owners = []
        for index, value in enumerate(wanted):
            match = value.matches(id_field, stored)
            if match is None:
                return None
            if match:
                owners.append(index)
        if not owners:
            return None  # Salesforce matched it by a rule the split does not know
        raw = orjson.dumps({k: v for k, v in record.items() if not (lookup.added and k == key)})
        for index in owners:
            shares[index].append(orjson.loads(raw))  # each job its own copy
    return [{"totalSize": len(s), "done": True, "records": s} for s in shares]
