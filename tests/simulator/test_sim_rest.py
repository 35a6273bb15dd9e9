"""sObject CRUD, upsert, versions, limits and error bodies over real HTTP."""

from __future__ import annotations

import re

import pytest
from sfsim.ids import to_18
from sfsim.testing import SimulatorClient

from tests.simulator.helpers import VERSION, Api

SF_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000")


async def test_versions_and_resources(api: Api) -> None:
    reply = await api.get("/services/data/")
    assert reply.status == 200
    versions = {v["version"]: v for v in reply.body}
    assert versions["62.0"] == {
        "label": "Winter '25",
        "url": "/services/data/v62.0",
        "version": "62.0",
    }
    assert versions["66.0"]["label"] == "Spring '26"
    assert "20.0" in versions
    assert "67.0" not in versions
    reply = await api.get(f"/services/data/{VERSION}/")
    assert reply.body["query"] == f"/services/data/{VERSION}/query"


async def test_unknown_version_and_unknown_path(api: Api) -> None:
    for path in ("/services/data/v99.0/limits", "/services/data/v19.0/query", "nope/x"):
        reply = await api.get(path, params={"q": "SELECT Id FROM Account"})
        assert reply.status == 404
        assert reply.body == [
            {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}
        ]


async def test_limits_with_and_without_slash(api: Api) -> None:
    await api.sim.set_daily_limit(5000, used=100)
    for path, remaining in (("limits", 4899), ("limits/", 4898)):  # each call counts itself
        reply = await api.get(path)
        assert reply.status == 200
        assert reply.body["DailyApiRequests"] == {"Max": 5000, "Remaining": remaining}


async def test_create_get_update_delete(api: Api) -> None:
    created = await api.post(
        "sobjects/Account",
        json={"name": "Acme", "AnnualRevenue": "1500.5", "numberofemployees": 12, "Phone": "555"},
    )
    assert created.status == 201
    assert set(created.body) == {"id", "success", "errors"}
    assert created.body["success"] is True
    assert created.body["errors"] == []
    record_id = created.body["id"]
    assert record_id.startswith("001")
    assert len(record_id) == 18

    got = await api.get(f"sobjects/Account/{record_id}")
    assert got.status == 200
    assert got.body["attributes"] == {
        "type": "Account",
        "url": f"/services/data/{VERSION}/sobjects/Account/{record_id}",
    }
    assert got.body["Name"] == "Acme"
    assert got.body["AnnualRevenue"] == 1500.5
    assert got.body["NumberOfEmployees"] == 12
    assert got.body["IsDeleted"] is False
    assert SF_DATETIME.fullmatch(got.body["CreatedDate"])

    some = await api.get(f"sobjects/account/{record_id[:15]}", params={"fields": "name, Phone"})
    assert some.body == {"attributes": got.body["attributes"], "Name": "Acme", "Phone": "555"}
    lower = await api.get(f"sobjects/Account/{record_id.lower()}", params={"fields": "Id"})
    assert lower.body["Id"] == record_id

    updated = await api.patch(
        f"sobjects/Account/{record_id}", json={"Phone": None, "Industry": "Tech"}
    )
    assert (updated.status, updated.body) == (204, None)
    got = await api.get(f"sobjects/Account/{record_id}")
    assert got.body["Phone"] is None
    assert got.body["Industry"] == "Tech"

    deleted = await api.delete(f"sobjects/Account/{record_id}")
    assert (deleted.status, deleted.body) == (204, None)
    again = await api.get(f"sobjects/Account/{record_id}")
    assert (again.status, again.body) == (
        404,
        [{"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED"}],
    )
    assert (await api.delete(f"sobjects/Account/{record_id}")).error_code == "ENTITY_IS_DELETED"
    assert (
        await api.patch(f"sobjects/Account/{record_id}", json={"Name": "x"})
    ).error_code == "ENTITY_IS_DELETED"


async def test_computed_and_default_fields(api: Api) -> None:
    contact = await api.post(
        "sobjects/Contact",
        json={"FirstName": "Ada", "LastName": "Lovelace", "Birthdate": "1815-12-10"},
    )
    got = await api.get(f"sobjects/Contact/{contact.body['id']}")
    assert got.body["Name"] == "Ada Lovelace"
    assert got.body["Birthdate"] == "1815-12-10"
    case_ids = [
        (await api.post("sobjects/Case", json={"Subject": f"s{i}"})).body["id"] for i in range(2)
    ]
    cases = [(await api.get(f"sobjects/Case/{cid}")).body for cid in case_ids]
    assert [c["CaseNumber"] for c in cases] == ["00001001", "00001002"]
    assert cases[0]["Status"] == "New"
    assert cases[0]["IsClosed"] is False
    await api.patch(f"sobjects/Case/{case_ids[0]}", json={"Status": "Closed"})
    assert (await api.get(f"sobjects/Case/{case_ids[0]}")).body["IsClosed"] is True


@pytest.mark.parametrize(
    ("body", "code", "fields"),
    [
        ({"Name": "x", "Foo": 1}, "INVALID_FIELD", ["Foo"]),
        ({"Phone": "1"}, "REQUIRED_FIELD_MISSING", ["Name"]),
        ({"Name": ""}, "REQUIRED_FIELD_MISSING", ["Name"]),
        (
            {"Name": "x", "CreatedDate": "2020-01-01T00:00:00Z"},
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            ["CreatedDate"],
        ),
        ({"Name": "x", "Id": "001000000000001"}, "INVALID_FIELD_FOR_INSERT_UPDATE", ["Id"]),
        ({"Name": "x", "NumberOfEmployees": "many"}, "JSON_PARSER_ERROR", None),
        (
            {"Name": "x", "NumberOfEmployees": 1.5},
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            ["NumberOfEmployees"],
        ),
        (
            {"Name": "x", "AnnualRevenue": True},
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            ["AnnualRevenue"],
        ),
        ({"Name": "x", "Phone": {"a": 1}}, "JSON_PARSER_ERROR", None),
        ({"Name": "x" * 256}, "STRING_TOO_LONG", ["Name"]),
    ],
)
async def test_create_account_errors(
    api: Api, body: dict[str, object], code: str, fields: list[str] | None
) -> None:
    reply = await api.post("sobjects/Account", json=body)
    assert reply.status == 400
    assert reply.error_code == code
    assert reply.body[0].get("fields") == fields
    assert await api.sim.records("Account") == []


async def test_create_messages(api: Api) -> None:
    reply = await api.post("sobjects/Account", json={"Name": "x", "Foo": 1})
    assert reply.body[0]["message"] == "No such column 'Foo' on sobject of type Account"
    reply = await api.post("sobjects/Lead", json={"Email": "a@b.co"})
    assert reply.body == [
        {
            "message": "Required fields are missing: [LastName, Company]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName", "Company"],
        }
    ]


async def test_other_type_errors(api: Api) -> None:
    assert (
        await api.post("sobjects/Contact", json={"LastName": "x", "Birthdate": "2020-02-30"})
    ).error_code == "JSON_PARSER_ERROR"
    assert (
        await api.post("sobjects/Contact", json={"LastName": "x", "Email": "nope"})
    ).error_code == "INVALID_EMAIL_ADDRESS"
    assert (
        await api.post("sobjects/Contact", json={"LastName": "x", "AccountId": "bad"})
    ).error_code == "MALFORMED_ID"
    account = to_18("003000000000001")  # a Contact id where an Account id belongs
    assert (
        await api.post("sobjects/Contact", json={"LastName": "x", "AccountId": account})
    ).error_code == "FIELD_INTEGRITY_EXCEPTION"
    assert (
        await api.post(
            "sobjects/Opportunity",
            json={"Name": "o", "StageName": "New", "CloseDate": "2026-01-01", "Amount": "12.5"},
        )
    ).status == 201


async def test_body_not_json_object(api: Api) -> None:
    for data in ("not json", "[1, 2]", ""):
        reply = await api.post(
            "sobjects/Account", data=data, headers={"Content-Type": "application/json"}
        )
        assert (reply.status, reply.error_code) == (400, "JSON_PARSER_ERROR"), data


async def test_unknown_object_malformed_and_foreign_ids(api: Api) -> None:
    assert (await api.post("sobjects/Foo__c", json={"Name": "x"})).body == [
        {"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}
    ]
    malformed = await api.get("sobjects/Account/001xyz")
    assert (malformed.status, malformed.body) == (
        400,
        [{"message": "malformed id 001xyz", "errorCode": "MALFORMED_ID"}],
    )
    contact_id = (await api.post("sobjects/Contact", json={"LastName": "x"})).body["id"]
    assert (await api.get(f"sobjects/Account/{contact_id}")).error_code == "NOT_FOUND"
    missing = to_18("001000000000999")
    for reply in (
        await api.get(f"sobjects/Account/{missing}"),
        await api.delete(f"sobjects/Account/{missing}"),
        await api.patch(f"sobjects/Account/{missing}", json={"Name": "y"}),
    ):
        assert (reply.status, reply.error_code) == (404, "NOT_FOUND")


async def test_unknown_field_in_fields_param(api: Api) -> None:
    record_id = (await api.post("sobjects/Account", json={"Name": "x"})).body["id"]
    reply = await api.get(f"sobjects/Account/{record_id}", params={"fields": "Name,Bogus"})
    assert (reply.status, reply.error_code) == (400, "INVALID_FIELD")
    assert "No such column 'Bogus' on entity 'Account'" in reply.body[0]["message"]


async def test_wrong_method(api: Api) -> None:
    reply = await api.call("PUT", "sobjects/Account/001000000000001AAA", json={})
    assert (reply.status, reply.error_code) == (405, "METHOD_NOT_ALLOWED")
    assert "Allow" in reply.headers


async def test_update_validates_like_insert(api: Api) -> None:
    record_id = (await api.post("sobjects/Account", json={"Name": "x"})).body["id"]
    assert (
        await api.patch(f"sobjects/Account/{record_id}", json={"Name": None})
    ).error_code == "REQUIRED_FIELD_MISSING"
    assert (
        await api.patch(f"sobjects/Account/{record_id}", json={"SystemModstamp": "2020-01-01"})
    ).error_code == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert (
        await api.patch(f"sobjects/Account/{record_id}", json=[1])
    ).error_code == "JSON_PARSER_ERROR"


# ---- upsert --------------------------------------------------------------------------------------
async def test_upsert_create_update_and_duplicates(api: Api) -> None:
    created = await api.patch("sobjects/Account/External_Id__c/EXT-1", json={"Name": "First"})
    assert created.status == 201
    assert created.body == {
        "id": created.body["id"],
        "success": True,
        "errors": [],
        "created": True,
    }
    updated = await api.patch("sobjects/Account/external_id__c/ext-1", json={"Name": "Second"})
    assert (updated.status, updated.body) == (
        200,
        {"id": created.body["id"], "success": True, "errors": [], "created": False},
    )
    got = await api.get("sobjects/Account/External_Id__c/EXT-1")
    assert got.body["Name"] == "Second"
    assert got.body["External_Id__c"] == "EXT-1"
    dup = await api.post("sobjects/Account", json={"Name": "Third", "External_Id__c": "ext-1"})
    assert (dup.status, dup.error_code) == (400, "DUPLICATE_VALUE")


async def test_upsert_before_api_46_answers_204(api: Api) -> None:
    await api.patch("sobjects/Account/External_Id__c/A", json={"Name": "a"})
    reply = await api.patch(
        "/services/data/v45.0/sobjects/Account/External_Id__c/A", json={"Name": "b"}
    )
    assert (reply.status, reply.body) == (204, None)


async def test_upsert_multiple_matches_answers_300(api: Api, sim: SimulatorClient) -> None:
    await sim.add_schema(
        "Ticket__c", "a07", {"Code__c": "string", "Qty__c": "int"}, external_ids=["Code__c"]
    )
    ids = await sim.seed(
        "Ticket__c", [{"Name": "t1", "Code__c": "X"}, {"Name": "t2", "Code__c": "x"}]
    )
    reply = await api.patch("sobjects/Ticket__c/Code__c/X", json={"Qty__c": 3})
    assert reply.status == 300
    assert sorted(reply.body) == sorted(
        f"/services/data/{VERSION}/sobjects/Ticket__c/{i}" for i in ids
    )
    assert all(r["Qty__c"] is None for r in await sim.records("Ticket__c"))
    assert (await api.get("sobjects/Ticket__c/Code__c/x")).status == 300
    assert ids[0].startswith("a07")


async def test_upsert_errors(api: Api) -> None:
    reply = await api.patch("sobjects/Account/Name/Acme", json={"Phone": "1"})
    assert (reply.status, reply.body) == (
        404,
        [
            {
                "message": "Provided external ID field does not exist or is not accessible: Name",
                "errorCode": "NOT_FOUND",
            }
        ],
    )
    assert (await api.patch("sobjects/Account/Nope__c/1", json={})).status == 404
    for body in ({"Name": "a", "Id": "001000000000001"}, {"Name": "a", "external_id__c": "E"}):
        reply = await api.patch("sobjects/Account/External_Id__c/E", json=body)
        assert (reply.status, reply.error_code) == (400, "INVALID_FIELD")
    reply = await api.patch("sobjects/Account/External_Id__c/E", json={"Phone": "1"})
    assert reply.error_code == "REQUIRED_FIELD_MISSING"
    assert (await api.get("sobjects/Account/External_Id__c/none")).error_code == "NOT_FOUND"
