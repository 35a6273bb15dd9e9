"""parse_soql: the SOQL subset, literal values and escaping, and what it rejects."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sfsim import SoqlError, parse_soql
from sfsim.soql import BoolOp, Comparison, Not

SOQL_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\b": "\\b",
    "\f": "\\f",
}


def soql_escape(text: str) -> str:
    return "".join(SOQL_ESCAPES.get(ch, ch) for ch in text)


def like_escape(text: str) -> str:
    return soql_escape(text).replace("%", "\\%").replace("_", "\\_")


def where(clause: str) -> str:
    return f"SELECT Id FROM Account WHERE {clause}"  # noqa: S608 - building SOQL is the point


def test_full_grammar() -> None:
    q = parse_soql(
        "select Id, Name, Account.Name from Contact where (Name = 'a' or Name like 'b%') "
        "and not Email = null order by Name desc nulls first, Id limit 10 offset 5"
    )
    assert [f.text for f in q.fields] == ["Id", "Name", "Account.Name"]
    assert q.sobject == "Contact"
    assert isinstance(q.where, BoolOp)
    assert q.where.op == "AND"
    assert isinstance(q.where.items[1], Not)
    assert [(o.field.text, o.descending, o.nulls_last) for o in q.order_by] == [
        ("Name", True, False),
        ("Id", False, False),
    ]
    assert (q.limit, q.offset) == (10, 5)


def test_count() -> None:
    q = parse_soql("SELECT COUNT() FROM Account WHERE Name != 'x'")
    assert q.count
    assert q.fields == ()


def test_literal_kinds_and_values() -> None:
    q = parse_soql(
        where(
            "Name IN ('a', 'b') AND NumberOfEmployees > -5 AND AnnualRevenue <= 2.5 "
            "AND IsDeleted = false AND Phone = null AND CreatedDate > 2024-01-02T03:04:05Z "
            "AND LastModifiedDate < 2024-01-02T03:04:05.123+02:00 AND CreatedDate = TODAY "
            "AND CreatedDate = LAST_N_DAYS:7 AND SystemModstamp != YESTERDAY"
        )
    )
    got = [(lit.kind, lit.value) for lit in q.literals()]
    assert got == [
        ("string", "a"),
        ("string", "b"),
        ("number", -5),
        ("number", 2.5),
        ("boolean", False),
        ("null", None),
        ("datetime", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("datetime", datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=timezone(timedelta(hours=2)))),
        ("date_keyword", "TODAY"),
        ("date_keyword", "LAST_N_DAYS:7"),
        ("date_keyword", "YESTERDAY"),
    ]
    assert parse_soql(where("Birthdate = 2020-02-29")).literals()[0].value == date(2020, 2, 29)


def test_escapes_unescape() -> None:
    lit = parse_soql(where(r"Name = 'O\'Neil \\ \"q\" \n\t\r\b\f'")).literals()[0]
    assert lit.value == 'O\'Neil \\ "q" \n\t\r\b\f'
    assert not lit.in_like
    assert lit.like_literal_text is None


def test_like_literal() -> None:
    lit = parse_soql(where(r"Name LIKE '50\% off\_now'")).literals()[0]
    assert lit.in_like
    assert lit.value == r"50\% off\_now"
    assert lit.like_literal_text == "50% off_now"
    wild = parse_soql(where("Name LIKE 'Acme%'")).literals()[0]
    assert wild.in_like
    assert wild.like_literal_text is None


@pytest.mark.parametrize(
    "clause",
    [
        "Name = 'unterminated",
        r"Name = 'bad \q escape'",
        r"Name = '100\%'",  # \% only inside LIKE
        r"Name = 'x\_y'",
        "Name = 'a' AND Name = 'b' OR Name = 'c'",  # AND/OR mixed without parentheses
        'Name = "double"',
        "Name = :bind",
        "Name LIKE 5",
        "Name NOT LIKE 'x'",
        "Name = 'a' GROUP BY Name",
        "CreatedDate > 2024-01-02T03:04:05",  # datetime without zone
        "Birthdate = 2024-13-01",
        "Name IN ()",
        "Name",
    ],
)
def test_malformed(clause: str) -> None:
    with pytest.raises(SoqlError) as info:
        parse_soql(where(clause))
    assert info.value.error_code == "MALFORMED_QUERY"
    assert "ERROR at Row:1:Column:" in info.value.message


def test_malformed_message_points_at_token() -> None:
    with pytest.raises(SoqlError) as info:
        parse_soql("SELECT Id FROM Account WHERE Name = 'a' OR Name = 'b' AND Id = null")
    message = info.value.message
    assert "unexpected token: AND" in message
    assert "Column:55" in message


def test_parentheses_allow_mixing() -> None:
    q = parse_soql(where("(Name = 'a' AND Name = 'b') OR NOT (Name = 'c' OR Id = null)"))
    assert isinstance(q.where, BoolOp)
    assert q.where.op == "OR"
    assert isinstance(q.where.items[0], BoolOp)


def test_not_in() -> None:
    q = parse_soql(where("Name NOT IN ('a')"))
    assert isinstance(q.where, Comparison)
    assert q.where.op == "NOT IN"


@given(st.text())
def test_escaped_literal_round_trips(text: str) -> None:
    lit = parse_soql(where(f"Name = '{soql_escape(text)}'")).literals()[0]
    assert lit.kind == "string"
    assert lit.value == text


@given(st.text())
def test_escaped_like_literal_round_trips(text: str) -> None:
    lit = parse_soql(where(f"Name LIKE '{like_escape(text)}'")).literals()[0]
    assert lit.in_like
    assert lit.like_literal_text == text
    assert lit.like_pattern is not None
    assert lit.like_pattern.fullmatch(text)
