"""Salesforce ids: checksum, 15/18-character normalisation, generated ids."""

from __future__ import annotations

import re

import pytest
from sfsim.ids import IdFactory, normalize_id, to_18


def test_to_18_matches_salesforce_checksum() -> None:
    # Example from Salesforce's documentation of the case-safe id.
    assert to_18("001A0000006Vm9r") == "001A0000006Vm9rIAC"
    assert to_18("0035000000xyzAB") == "0035000000xyzABAAY"


def test_normalize_accepts_15_and_case_insensitive_18() -> None:
    full = "001A0000006Vm9rIAC"
    assert normalize_id("001A0000006Vm9r") == full
    assert normalize_id(full) == full
    assert normalize_id(full.lower()) == full
    assert normalize_id(full.upper()) == full


@pytest.mark.parametrize(
    "bad", ["", "001", "001A0000006Vm9", "001A0000006Vm9r!", "001A0000006Vm9rIA"]
)
def test_normalize_rejects_malformed(bad: str) -> None:
    assert normalize_id(bad) is None


def test_generated_ids_are_realistic_and_unique() -> None:
    factory = IdFactory()
    ids = [factory.new("001") for _ in range(500)]
    assert len(set(ids)) == 500
    for value in ids:
        assert re.fullmatch(r"0015g0[0-9A-Za-z]{9}[A-Z0-5]{3}", value)
        assert to_18(value[:15]) == value


def test_bad_prefix_rejected() -> None:
    with pytest.raises(ValueError, match="prefix"):
        IdFactory().new("0!1")
