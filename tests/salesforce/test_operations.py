"""Acceptance 3.1: each operation's success, no-data and error paths map onto the contract,
against the simulator over real HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.support.harness import Harness


@dataclass
class Case:
    name: str
    job: dict[str, Any]
    status: str
    http_status: int | None
    code: str | None = None
    sf_error: str | None = None


async def seed(sim: SimulatorClient) -> dict[str, str]:
    accounts = await sim.seed("Account", [{"Name": "Acme", "Phone": "555-0100"}])
    contacts = await sim.seed(
        "Contact",
        [
            {
                "FirstName": "Ada",
                "LastName": "Lovelace",
                "Phone": "555-0123",
                "Ext_Id__c": "EXT-1",
                "AccountId": accounts[0],
            },
            {"FirstName": "Alan", "LastName": "Turing", "Phone": "555-0124", "Ext_Id__c": "DUP"},
            {"FirstName": "Alan", "LastName": "Turing2", "Phone": "555-0125"},
        ],
    )
    cases = await sim.seed("Case", [{"Subject": "Late"}, {"Subject": "Gone"}])
    return {"account": accounts[0], "contact": contacts[0], "case": cases[0], "gone": cases[1]}


MISSING_CASE = "500000000000000AAA"


def cases(ids: dict[str, str]) -> list[Case]:
    soql = "SELECT Id, Name FROM Contact WHERE Phone = :p"
    return [
        # search: SOQL
        Case(
            "soql ok", {"operation": "search", "soql": soql, "params": {"p": "555-0123"}}, "ok", 200
        ),
        Case(
            "soql no data",
            {"operation": "search", "soql": soql, "params": {"p": "000"}},
            "no_data",
            200,
        ),
        Case(
            "soql malformed",
            {"operation": "search", "soql": "SELEC Id FROM Contact"},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "MALFORMED_QUERY",
        ),
        Case(
            "soql unknown field",
            {"operation": "search", "soql": "SELECT Nope FROM Contact"},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "INVALID_FIELD",
        ),
        Case(
            "soql unbound", {"operation": "search", "soql": soql}, "failed", None, "INVALID_REQUEST"
        ),
        # search: SOSL
        Case(
            "sosl ok",
            {
                "operation": "search",
                "params": {"t": "Lovelace"},
                "sosl": "FIND :t IN NAME FIELDS RETURNING Contact(Id, Name)",
            },
            "ok",
            200,
        ),
        Case(
            "sosl no data",
            {
                "operation": "search",
                "params": {"t": "Nobody"},
                "sosl": "FIND :t RETURNING Contact(Id)",
            },
            "no_data",
            200,
        ),
        Case(
            "sosl malformed",
            {"operation": "search", "sosl": "FIND {x RETURNING Contact"},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "MALFORMED_SEARCH",
        ),
        # get
        Case(
            "get ok",
            {
                "operation": "get",
                "object": "Case",
                "id": ids["case"],
                "fields": ["Subject", "Status"],
            },
            "ok",
            200,
        ),
        Case(
            "get no data",
            {"operation": "get", "object": "Case", "id": MISSING_CASE},
            "no_data",
            404,
        ),
        Case(
            "get deleted", {"operation": "get", "object": "Case", "id": ids["gone"]}, "no_data", 404
        ),
        Case(
            "get bad field",
            {"operation": "get", "object": "Case", "id": ids["case"], "fields": ["Nope"]},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "INVALID_FIELD",
        ),
        # insert
        Case(
            "insert ok",
            {"operation": "insert", "object": "Case", "fields": {"Subject": "New"}},
            "ok",
            201,
        ),
        Case(
            "insert missing field",
            {"operation": "insert", "object": "Contact", "fields": {"FirstName": "X"}},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "REQUIRED_FIELD_MISSING",
        ),
        Case(
            "insert unknown field",
            {"operation": "insert", "object": "Case", "fields": {"Nope__c": 1}},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "INVALID_FIELD",
        ),
        Case(
            "insert unknown object",
            {"operation": "insert", "object": "Nope__c", "fields": {"Name": "x"}},
            "failed",
            404,
            "SALESFORCE_ERROR",
            "NOT_FOUND",
        ),
        # update
        Case(
            "update ok",
            {
                "operation": "update",
                "object": "Case",
                "id": ids["case"],
                "fields": {"Priority": "High"},
            },
            "ok",
            204,
        ),
        Case(
            "update no data",
            {
                "operation": "update",
                "object": "Case",
                "id": MISSING_CASE,
                "fields": {"Priority": "High"},
            },
            "no_data",
            404,
        ),
        Case(
            "update bad field",
            {"operation": "update", "object": "Case", "id": ids["case"], "fields": {"Nope__c": 1}},
            "failed",
            400,
            "SALESFORCE_ERROR",
            "INVALID_FIELD",
        ),
        # upsert
        Case(
            "upsert created",
            {
                "operation": "upsert",
                "object": "Contact",
                "external_id_field": "Ext_Id__c",
                "external_id": "NEW-9",
                "fields": {"LastName": "New"},
            },
            "ok",
            201,
        ),
        Case(
            "upsert updated",
            {
                "operation": "upsert",
                "object": "Contact",
                "external_id_field": "Ext_Id__c",
                "external_id": "EXT-1",
                "fields": {"Phone": "555-9999"},
            },
            "ok",
            200,
        ),
        Case(
            "upsert unknown ext field",
            {
                "operation": "upsert",
                "object": "Contact",
                "external_id_field": "Nope__c",
                "external_id": "1",
                "fields": {"LastName": "x"},
            },
            "failed",
            404,
            "SALESFORCE_ERROR",
            "NOT_FOUND",
        ),
        # delete
        Case(
            "delete no data",
            {"operation": "delete", "object": "Case", "id": MISSING_CASE},
            "no_data",
            404,
        ),
        Case(
            "delete deleted",
            {"operation": "delete", "object": "Case", "id": ids["gone"]},
            "no_data",
            404,
        ),
        Case("delete ok", {"operation": "delete", "object": "Case", "id": ids["case"]}, "ok", 204),
    ]


@pytest.mark.parametrize("operation", ["search", "get", "insert", "update", "upsert", "delete"])
async def test_each_operation_maps_to_the_contract(
    sf: Harness, simulator: SimulatorClient, operation: str
) -> None:
    """One table per operation: its success, no-data and error rows, in order."""
    ids = await seed(simulator)
    deleted = await sf.run(operation="delete", object="Case", id=ids["gone"])
    assert deleted.status == "ok"
    table = [c for c in cases(ids) if c.job["operation"] == operation]
    writes_only = operation in ("insert", "upsert")  # they have no no-data exit
    assert {c.status for c in table} >= {"ok", "failed" if writes_only else "no_data"}
    failures = []
    for case in table:
        result = await sf.run(**case.job)
        got = (
            result.status.value,
            result.http_status,
            result.error.code.value if result.error else None,
            result.error.salesforce_errors[0].errorCode
            if result.error and result.error.salesforce_errors
            else None,
        )
        want = (case.status, case.http_status, case.code, case.sf_error)
        if got != want:
            failures.append(f"{case.name}: got {got}, want {want}")
    assert not failures, "\n".join(failures)


async def test_results_carry_records_ids_and_counts(
    sf: Harness, simulator: SimulatorClient
) -> None:
    ids = await seed(simulator)
    found = await sf.run(
        operation="search",
        soql="SELECT Id, Name, Account.Name FROM Contact WHERE Phone = :p",
        params={"p": "555-0123"},
    )
    assert found.count == 1
    assert found.records is not None
    assert found.records[0]["Id"] == ids["contact"]
    assert found.records[0]["Name"] == "Ada Lovelace"
    assert found.records[0]["attributes"]["type"] == "Contact"
    assert found.attempts == 1

    got = await sf.run(operation="get", object="Case", id=ids["case"], fields=["Subject"])
    assert got.records is not None
    assert got.records[0]["Subject"] == "Late"

    inserted = await sf.run(operation="insert", object="Case", fields={"Subject": "Fresh"})
    assert inserted.id is not None
    assert inserted.id.startswith("500")
    assert len(inserted.id) == 18
    stored = [r for r in await simulator.records("Case") if r["Id"] == inserted.id]
    assert stored[0]["Subject"] == "Fresh"

    created = await sf.run(
        operation="upsert",
        object="Contact",
        external_id_field="Ext_Id__c",
        external_id="NEW-1",
        fields={"LastName": "New"},
    )
    assert (created.created, created.http_status) == (True, 201)
    again = await sf.run(
        operation="upsert",
        object="Contact",
        external_id_field="Ext_Id__c",
        external_id="NEW-1",
        fields={"LastName": "Newer"},
    )
    assert (again.created, again.http_status, again.id) == (False, 200, created.id)


async def test_upsert_matching_several_records_writes_nothing(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.add_schema("Lead", "00Q", {"Code__c": "string"}, external_ids=["Code__c"])
    await simulator.seed(
        "Lead",
        [
            {"LastName": "A", "Company": "X", "Code__c": "SAME"},
            {"LastName": "B", "Company": "Y", "Code__c": "SAME"},
        ],
    )
    result = await sf.run(
        operation="upsert",
        object="Lead",
        external_id_field="Code__c",
        external_id="SAME",
        fields={"Company": "Z"},
    )
    assert (result.status.value, result.http_status) == ("failed", 300)
    assert result.error is not None
    assert result.error.code.value == "SALESFORCE_ERROR"
    assert "2 records" in result.error.message
    assert {r["Company"] for r in await simulator.records("Lead")} == {"X", "Y"}


async def test_search_follows_next_records_url_up_to_max_records(
    sf: Harness, simulator: SimulatorClient
) -> None:
    await simulator.seed("Account", [{"Name": f"Bulk {i:04d}"} for i in range(4500)])
    everything = await sf.run(
        operation="search", soql="SELECT Id, Name FROM Account ORDER BY Name", max_records=2000
    )
    assert everything.count == 4500
    assert everything.records is not None
    assert len(everything.records) == 2000
    some = await sf.run(operation="search", soql="SELECT Id FROM Account", max_records=250)
    assert some.records is not None
    assert len(some.records) == 250
    assert some.count == 4500


async def test_usage_is_read_from_every_response(sf: Harness, simulator: SimulatorClient) -> None:
    await simulator.set_daily_limit(15000, used=100)
    await sf.run(operation="search", soql="SELECT Id FROM Account")
    # Nothing reads /limits here (no fleet, no reserve reached): the gauges show the reading
    # of the search's own response.
    labels = {"account": "main"}
    limit = sf.metrics.registry.get_sample_value("sfworker_salesforce_api_usage_limit", labels)
    used = sf.metrics.registry.get_sample_value("sfworker_salesforce_api_usage_used", labels)
    assert limit == 15000
    assert used is not None
    assert used >= 101
    probes = sf.metrics.registry.get_sample_value(
        "sfworker_limits_probes_total", {"account": "main", "outcome": "ok"}
    )
    assert not probes
