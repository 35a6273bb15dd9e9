"""Lookups merged into one IN query (lookups.py, merging.py): which shapes merge, the merged
statement, and the split of its answer by Salesforce's comparison rules."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from worker.salesforce.ids import canonical_id
from worker.salesforce.lookups import MAX_VALUES, fits, lookups, split
from worker.salesforce.merging import Unit

PHONE = "SELECT Id, Name FROM Contact WHERE Phone = '+1 415 555 0100'"


def record(rid: str, **fields: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Contact", "url": f"/x/{rid}"}, "Id": rid, **fields}


def answer(*records: dict[str, Any]) -> dict[str, Any]:
    return {"totalSize": len(records), "done": True, "records": list(records)}


def test_the_typical_lookup_merges_with_the_field_added_and_stripped() -> None:
    (lookup,) = lookups(PHONE)
    assert (lookup.field, lookup.value, lookup.added) == ("Phone", "+1 415 555 0100", True)
    other = lookups(PHONE.replace("0100", "0199"))[0]
    assert other.key == lookup.key
    assert lookup.merged(["a", "O'Neil"]) == (
        "SELECT Id, Name, Phone FROM Contact WHERE Phone IN ('a', 'O\\'Neil')"
    )
    shares = split(
        lookup, ["+1 415 555 0100", "x"], answer(record("1", Name="A", Phone="+1 415 555 0100"))
    )
    assert shares == [
        answer(record("1", Name="A")),  # Phone was not asked: not given
        answer(),
    ]


@pytest.mark.parametrize(
    "statement",
    [
        PHONE + " LIMIT 1",
        PHONE + " ORDER BY Name",
        PHONE + " OFFSET 1",
        "SELECT COUNT() FROM Contact WHERE Phone = 'a'",
        "SELECT Id, (SELECT Id FROM Cases) FROM Contact WHERE Phone = 'a'",
        "SELECT Id FROM Contact WHERE Phone = 'a' OR Name = 'b'",
        "SELECT Id FROM Contact WHERE Id IN (SELECT ContactId FROM Case) AND Phone = 'a'",
        "SELECT Name, COUNT(Id) FROM Contact WHERE Phone = 'a' GROUP BY Name",
        "SELECT Id FROM Contact WHERE Phone LIKE 'a%'",
        "SELECT Id FROM Contact WHERE Account.Phone = 'a'",
        "SELECT Id FROM Contact WHERE Phone = ''",  # empty: never merged
        "SELECT Id FROM Contact WHERE Phone = 'caf\u00e9'",  # not ASCII: case rules may differ
        "SELECT Id FROM Contact WHERE Id = 'not an id'",
        "SELECT Id FROM Contact WHERE Phone = null",
        "SELECT Id FROM Contact WHERE Phone = 'a' FOR VIEW",
        "SELECT Id FROM Contact",
    ],
)
def test_shapes_whose_split_is_not_provable_go_as_before(statement: str) -> None:
    assert lookups(statement) == []


def test_other_conditions_stay_and_are_part_of_the_shape() -> None:
    text = "SELECT Id FROM Contact WHERE Status__c = 'Open' AND Phone = 'a' AND (X = 1 OR Y = 2)"
    found = {lk.field: lk for lk in lookups(text)}
    assert set(found) == {"Status__c", "Phone"}  # either may be the one that varies
    phone = found["Phone"]
    assert phone.merged(["a", "b"]) == (
        "SELECT Id, Phone FROM Contact WHERE Status__c = 'Open' AND Phone IN ('a', 'b') "
        "AND (X = 1 OR Y = 2)"
    )
    assert lookups(text.replace("'Open'", "'Closed'"))[1].key != phone.key


def test_text_compares_case_insensitively_and_duplicates_each_get_their_copy() -> None:
    (lookup,) = lookups("SELECT Id, LastName FROM Contact WHERE LastName = 'x'")
    found = answer(record("1", LastName="O'Neil"), record("2", LastName="o'neil"))
    shares = split(lookup, ["O'NEIL", "o'neil", "smith"], found)
    assert shares is not None
    assert [[r["Id"] for r in s["records"]] for s in shares] == [["1", "2"], ["1", "2"], []]
    assert [s["totalSize"] for s in shares] == [2, 2, 0]
    shares[0]["records"][0]["LastName"] = "changed"
    assert shares[1]["records"][0]["LastName"] == "O'Neil"


def test_ids_match_in_both_lengths_and_a_null_never() -> None:
    id18 = canonical_id("0035g000HbXm5aC")
    assert id18 is not None
    assert len(id18) == 18
    (lookup,) = lookups(f"SELECT Id FROM Contact WHERE Id = '{id18}'")  # noqa: S608 - SOQL is the subject
    shares = split(lookup, [id18[:15], id18.lower(), "0035g000HbXm5aD"], answer(record(id18)))
    assert shares is not None
    assert [s["totalSize"] for s in shares] == [1, 1, 0]
    (by_phone,) = lookups("SELECT Id, Phone FROM Contact WHERE Phone = 'a'")
    assert split(by_phone, ["a"], answer(record("1", Phone=None))) is None  # nobody's: refused


def test_a_field_that_may_be_text_or_an_id_refuses_a_split_that_depends_on_it() -> None:
    id18 = canonical_id("0015g000HbXm5aC")
    assert id18 is not None
    statement = f"SELECT Id, AccountId FROM Contact WHERE AccountId = '{id18[:15]}'"  # noqa: S608
    (lookup,) = lookups(statement)
    # As an id field the 15 characters match; as text they do not: no provable split.
    assert split(lookup, [id18[:15]], answer(record("1", AccountId=id18))) is None


def test_an_answer_that_pages_or_holds_a_stranger_is_not_split() -> None:
    (lookup,) = lookups(PHONE)
    paged = {**answer(record("1", Phone="a")), "done": False, "nextRecordsUrl": "/x"}
    assert split(lookup, ["a"], paged) is None
    assert split(lookup, ["a"], answer(record("1", Phone="b"))) is None
    assert split(lookup, ["a"], [{"errorCode": "MALFORMED_QUERY"}]) is None


def test_merged_statements_stay_within_the_bounds() -> None:
    (lookup,) = lookups(PHONE)
    assert fits(lookup, ["555-0100"] * MAX_VALUES, "/query")
    assert not fits(lookup, ["555-0100"] * (MAX_VALUES + 1), "/query")
    assert not fits(lookup, ["x" * 3000, "y" * 3000, "z" * 3000], "/query")


def test_a_unit_built_one_value_at_a_time_admits_exactly_what_fits_admits() -> None:
    """merging.Unit checks a join by lengths kept as values come (the batcher asks at every
    call); its answer must be `fits`'s on the whole statement, quotes, escapes, non-ASCII and
    repeated values included, up to both bounds."""
    rnd = random.Random(7)
    alphabet = ["a", "Z", "'", "\\", " ", "%", "+", "é", "☎", "\n", "0", '"']
    (lookup,) = lookups(PHONE)
    for _ in range(40):
        unit = Unit([])
        values: list[str] = []
        while True:
            size = rnd.choice([1, 5, 40, 400])
            value = rnd.choice(values) if values and rnd.random() < 0.2 else ""
            value = value or "".join(rnd.choice(alphabet) for _ in range(size))
            expected = fits(lookup, [*unit.values(), value], "/services/data/v62.0/query")
            assert unit.admits(replace(lookup, value=value), "/services/data/v62.0/query") is (
                expected
            )
            if not expected:
                break
            unit.choose(replace(lookup, value=value))
            values.append(value)
        assert len(unit.values()) <= MAX_VALUES
