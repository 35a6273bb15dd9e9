"""Placeholders become literals escaped for their language and place, or the job is refused."""

from __future__ import annotations

import pytest

from worker.salesforce.binding import BindingError, bind_soql, bind_sosl

SOQL_CASES = [
    (
        "SELECT Id FROM Contact WHERE Phone = :p",
        {"p": "555"},
        "SELECT Id FROM Contact WHERE Phone = '555'",
    ),
    ("WHERE Name = :n", {"n": "x' OR Name != '"}, "WHERE Name = 'x\\' OR Name != \\''"),
    ("WHERE Name = :n", {"n": "a\\b"}, "WHERE Name = 'a\\\\b'"),
    ("WHERE Name = :n", {"n": "l1\nl2\tx\r"}, "WHERE Name = 'l1\\nl2\\tx\\r'"),
    ("WHERE Name = :n", {"n": "50%_off"}, "WHERE Name = '50%_off'"),
    ("WHERE Name LIKE :n", {"n": "50%_off"}, "WHERE Name LIKE '50\\%\\_off'"),
    ("WHERE Amount > :a AND n = :b", {"a": 10, "b": 2.5}, "WHERE Amount > 10 AND n = 2.5"),
    ("WHERE Amount > :a", {"a": 1e-7}, "WHERE Amount > 0.0000001"),
    (
        "WHERE IsClosed = :c AND x = :d",
        {"c": True, "d": None},
        "WHERE IsClosed = true AND x = null",
    ),
    ("WHERE Id IN (:a, :b)", {"a": "1", "b": "2"}, "WHERE Id IN ('1', '2')"),
    ("SELECT Id FROM Case LIMIT :n", {"n": 5}, "SELECT Id FROM Case LIMIT 5"),
    ("WHERE CloseDate > :d:date", {"d": "2024-05-01"}, "WHERE CloseDate > 2024-05-01"),
    (
        "WHERE CreatedDate > :d:datetime",
        {"d": "2024-05-01T10:00:00Z"},
        "WHERE CreatedDate > 2024-05-01T10:00:00Z",
    ),
    (
        "WHERE Subject = 'Re: hi' AND Name = :n",
        {"n": "x"},
        "WHERE Subject = 'Re: hi' AND Name = 'x'",
    ),
    (
        "WHERE CreatedDate = LAST_N_DAYS:30 AND Name = :n",
        {"n": "x"},
        "WHERE CreatedDate = LAST_N_DAYS:30 AND Name = 'x'",
    ),
    (
        "WHERE Subject = 'it\\'s :n' AND Name = :n2",
        {"n2": "y"},
        "WHERE Subject = 'it\\'s :n' AND Name = 'y'",
    ),
]


@pytest.mark.parametrize(("statement", "params", "expected"), SOQL_CASES)
def test_soql_binding(statement: str, params: dict, expected: str) -> None:
    assert bind_soql(statement, params) == expected


@pytest.mark.parametrize(
    ("statement", "params", "problem"),
    [
        ("WHERE Name = :n", {}, "no value"),
        ("WHERE Name = ':n'", {"n": "x"}, "inside a quoted string"),
        ("WHERE Name LIKE :n", {"n": 3}, "LIKE takes a string"),
        ("WHERE Name LIKE :n", {"n": None}, "LIKE takes a string"),
        ("LIMIT :n", {"n": "5"}, "non-negative integer"),
        ("LIMIT :n", {"n": True}, "non-negative integer"),
        ("LIMIT :n", {"n": -1}, "non-negative integer"),
        ("WHERE d > :d:date", {"d": "2024-13-01"}, "date"),
        ("WHERE d > :d:date", {"d": "2024-05-01' OR x='"}, "date"),
        ("WHERE d > :d:datetime", {"d": 20240501}, "datetime"),
        ("WHERE Id IN :ids", {"ids": "a"}, "IN"),
        ("WHERE a = :f", {"f": float("nan")}, "finite"),
    ],
)
def test_soql_binding_refusals(statement: str, params: dict, problem: str) -> None:
    with pytest.raises(BindingError, match=problem):
        bind_soql(statement, params)


@pytest.mark.parametrize(
    ("statement", "params", "expected"),
    [
        ("FIND :t RETURNING Contact(Id)", {"t": "Ada"}, 'FIND {"Ada"} RETURNING Contact(Id)'),
        (
            "find {:t} IN PHONE FIELDS RETURNING Contact",
            {"t": "415-555"},
            'find {"415\\-555"} IN PHONE FIELDS RETURNING Contact',
        ),
        (
            "FIND :t RETURNING Contact",
            {"t": 'a"b} OR {c*'},
            'FIND {"a\\"b\\} OR \\{c\\*"} RETURNING Contact',
        ),
        (
            "FIND :t RETURNING Contact(Id WHERE LastName = :l)",
            {"t": "x y", "l": "O'Neil"},
            "FIND {\"x y\"} RETURNING Contact(Id WHERE LastName = 'O\\'Neil')",
        ),
        (
            "FIND {Acme} RETURNING Account(Id WHERE Name = :n)",
            {"n": "Acme"},
            "FIND {Acme} RETURNING Account(Id WHERE Name = 'Acme')",
        ),
        ("FIND :t RETURNING Contact", {"t": 4155550123}, 'FIND {"4155550123"} RETURNING Contact'),
    ],
)
def test_sosl_binding(statement: str, params: dict, expected: str) -> None:
    assert bind_sosl(statement, params) == expected


@pytest.mark.parametrize(
    ("statement", "params", "problem"),
    [
        ("FIND :t RETURNING Contact", {}, "no value"),
        ("FIND {John :t} RETURNING Contact", {"t": "x"}, "search term"),
        ("FIND :t RETURNING Contact", {"t": None}, "string or a number"),
        ("FIND :t RETURNING Contact", {"t": True}, "string or a number"),
        ("FIND :t RETURNING Contact", {"t": "  "}, "empty"),
    ],
)
def test_sosl_binding_refusals(statement: str, params: dict, problem: str) -> None:
    with pytest.raises(BindingError, match=problem):
        bind_sosl(statement, params)
