"""parse_sosl: search-term escaping, reserved characters, RETURNING clauses."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sfsim import SoslError, parse_sosl

RESERVED = set("?&|!{}[]()^~*:\\\"'+-")
CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def sosl_escape(text: str) -> str:
    return "".join(CONTROL.get(ch) or ("\\" + ch if ch in RESERVED else ch) for ch in text)


def test_terms_words_and_phrases() -> None:
    q = parse_sosl('FIND {acme "big co" wid*} IN NAME FIELDS RETURNING Account(Id, Name)')
    assert [(t.text, t.phrase, t.wildcard) for t in q.terms] == [
        ("acme", False, False),
        ("big co", True, False),
        ("wid*", False, True),
    ]
    assert q.scope == "NAME"
    assert [(r.sobject, [f.text for f in r.fields]) for r in q.returning] == [
        ("Account", ["Id", "Name"])
    ]


def test_escaped_reserved_characters_are_literal() -> None:
    q = parse_sosl(r"FIND {555\-1234 O\'Neil \{x\} a\*b \\ \n} RETURNING Contact")
    assert [t.text for t in q.terms] == ["555-1234", "O'Neil", "{x}", "a*b", "\\", "\n"]
    assert not any(t.wildcard for t in q.terms)


def test_operators() -> None:
    q = parse_sosl("FIND {alpha AND NOT beta OR gamma} RETURNING Account")
    assert [(t.text, t.negated) for t in q.terms] == [
        ("alpha", False),
        ("beta", True),
        ("gamma", False),
    ]
    assert len(q.groups) == 2


def test_returning_where_literals_and_limits() -> None:
    q = parse_sosl(
        "FIND {acme} RETURNING Account(Id WHERE Name LIKE 'ac\\%%' ORDER BY Name LIMIT 5), "
        "Contact(Name WHERE Email != null) LIMIT 20"
    )
    assert [(lit.kind, lit.value, lit.in_like) for lit in q.literals()] == [
        ("string", "ac\\%%", True),
        ("null", None, False),
    ]
    assert q.returning[0].limit == 5
    assert q.limit == 20


@pytest.mark.parametrize(
    "search",
    [
        "FIND {555-1234} RETURNING Contact",  # unescaped reserved '-'
        "FIND {a:b} RETURNING Contact",
        "FIND {o'neil} RETURNING Contact",
        "FIND {bad \\q escape} RETURNING Contact",
        "FIND {un{balanced} RETURNING Contact",
        "FIND {missing close RETURNING Contact",
        "FIND {a} RETURNING Contact",  # one character
        "FIND {a*} RETURNING Contact",
        "FIND {*?} RETURNING Contact",
        'FIND {"open phrase} RETURNING Contact',
        "FIND {AND acme} RETURNING Contact",
        "FIND {acme OR} RETURNING Contact",
        "FIND acme RETURNING Contact",
        "FIND {acme} RETURNING Contact(Name WHERE Name = 'x' AND Id = null OR Name = 'y')",
        "FIND {acme} RETURNING Contact(Name WHERE Name = '\\%')",
        "FIND {acme} RETURNING",
        "FIND {acme} IN SOME FIELDS",
    ],
)
def test_malformed(search: str) -> None:
    with pytest.raises(SoslError) as info:
        parse_sosl(search)
    assert info.value.error_code == "MALFORMED_SEARCH"


def test_too_short_message() -> None:
    with pytest.raises(SoslError, match="search term must be longer than one character"):
        parse_sosl("FIND {x*} RETURNING Account")


@given(st.text(min_size=2).filter(lambda t: not any(c.isspace() for c in t)))
def test_escaped_term_round_trips(text: str) -> None:
    assume(text.upper() not in ("AND", "OR", "NOT"))
    q = parse_sosl(f"FIND {{{sosl_escape(text)}}} RETURNING Account")
    assert [t.text for t in q.terms] == [text]
    assert not q.terms[0].wildcard
    assert q.terms[0].pattern is not None
    assert q.terms[0].pattern.fullmatch(text)
