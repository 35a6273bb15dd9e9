"""POST /composite: limits, referenceIds, references, allOrNone, one API call, per-subrequest
faults, and what fails the request as a whole."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.simulator.helpers import VERSION, Api, Reply

BASE = f"/services/data/{VERSION}"


def sub(method: str, path: str, ref: str, body: Any = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"method": method, "url": f"{BASE}/{path}", "referenceId": ref}
    if body is not None:
        item["body"] = body
    return {**item, **extra}


def query(soql: str, ref: str) -> dict[str, Any]:
    return sub("GET", f"query?q={quote(soql)}", ref)


async def composite(api: Api, subs: list[dict[str, Any]], all_or_none: bool = False) -> Reply:
    return await api.post("composite", json={"allOrNone": all_or_none, "compositeRequest": subs})


def results(reply: Reply) -> dict[str, dict[str, Any]]:
    assert reply.status == 200, reply.body
    return {r["referenceId"]: r for r in reply.body["compositeResponse"]}


def used(reply: Reply) -> int:
    return int(reply.headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])


async def test_subrequests_answer_in_order_and_count_one_api_call(api: Api) -> None:
    await api.sim.seed("Contact", [{"LastName": "Lovelace", "Phone": "+1 415 555 0101"}])
    reply = await composite(
        api,
        [
            query("SELECT Id, Name FROM Contact WHERE Phone = '+1 415 555 0101'", "q1"),
            sub("POST", "sobjects/Case", "c1", {"Subject": "call"}),
            sub("GET", "sobjects/Contact/003000000000000AAA", "g1"),
        ],
    )
    assert [r["referenceId"] for r in reply.body["compositeResponse"]] == ["q1", "c1", "g1"]
    by_ref = results(reply)
    assert by_ref["q1"]["httpStatusCode"] == 200
    assert [r["Name"] for r in by_ref["q1"]["body"]["records"]] == ["Lovelace"]
    created = by_ref["c1"]
    assert created["httpStatusCode"] == 201
    assert created["body"]["success"] is True
    assert created["httpHeaders"]["Location"].endswith(created["body"]["id"])
    assert by_ref["g1"]["httpStatusCode"] == 404
    assert by_ref["g1"]["body"][0]["errorCode"] == "NOT_FOUND"
    assert used(reply) == 1  # three subrequests, one API call
    counters = await api.sim.counters()
    assert counters["requests"]["composite"] == 1
    assert counters["subrequests"] == {"query": 1, "sobject_create": 1, "sobject_get": 1}
    assert counters["api_usage"]["used"] == 1


async def test_allornone_false_each_subrequest_stands_alone(api: Api) -> None:
    reply = await composite(
        api,
        [
            sub("POST", "sobjects/Account", "good", {"Name": "Kept"}),
            sub("POST", "sobjects/Account", "bad", {"Name": "X", "Nope__c": 1}),
            sub("POST", "sobjects/Contact", "child", {"LastName": "C", "AccountId": "@{bad.id}"}),
            sub("POST", "sobjects/Account", "also", {"Name": "Also kept"}),
        ],
    )
    by_ref = results(reply)
    assert by_ref["good"]["httpStatusCode"] == 201
    assert by_ref["bad"]["httpStatusCode"] == 400
    assert by_ref["bad"]["body"][0]["errorCode"] == "INVALID_FIELD"
    assert by_ref["child"]["httpStatusCode"] == 400
    assert by_ref["child"]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert by_ref["also"]["httpStatusCode"] == 201
    names = sorted(r["Name"] for r in await api.sim.records("Account"))
    assert names == ["Also kept", "Kept"]
    assert await api.sim.records("Contact") == []


async def test_allornone_true_rolls_back_everything(api: Api) -> None:
    [existing] = await api.sim.seed("Account", [{"Name": "Before"}])
    reply = await composite(
        api,
        [
            sub("POST", "sobjects/Account", "a1", {"Name": "New"}),
            sub("PATCH", f"sobjects/Account/{existing}", "u1", {"Name": "After"}),
            sub("POST", "sobjects/Contact", "bad", {"FirstName": "no last name"}),
            sub("POST", "sobjects/Account", "a2", {"Name": "Never"}),
        ],
        all_or_none=True,
    )
    by_ref = results(reply)
    assert by_ref["bad"]["httpStatusCode"] == 400
    assert by_ref["bad"]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    for ref in ("a1", "u1", "a2"):
        assert by_ref[ref]["httpStatusCode"] == 400
        assert by_ref[ref]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    accounts = await api.sim.records("Account")
    assert [(a["Id"], a["Name"]) for a in accounts] == [(existing, "Before")]


async def test_references_in_url_and_body(api: Api) -> None:
    await api.sim.seed("Account", [{"Name": "Acme", "Phone": "555-0100"}])
    soql = "SELECT Id, Name FROM Account WHERE Phone = '555-0100'"
    reply = await composite(
        api,
        [
            query(soql, "acct"),
            sub(
                "POST",
                "sobjects/Contact",
                "contact",
                {"LastName": "Ref", "AccountId": "@{acct.records[0].Id}"},
            ),
            sub("GET", "sobjects/Contact/@{contact.id}?fields=AccountId,LastName", "read"),
            sub("POST", "sobjects/Case", "case", {"Subject": "for @{acct.records[0].Name}"}),
        ],
    )
    by_ref = results(reply)
    account_id = by_ref["acct"]["body"]["records"][0]["Id"]
    assert by_ref["contact"]["httpStatusCode"] == 201
    assert by_ref["read"]["httpStatusCode"] == 200
    assert by_ref["read"]["body"]["AccountId"] == account_id
    [case] = await api.sim.records("Case")
    assert case["Subject"] == "for Acme"


async def test_reference_to_missing_value_halts_only_the_dependent(api: Api) -> None:
    reply = await composite(
        api,
        [
            query("SELECT Id FROM Account WHERE Name = 'nobody'", "empty"),
            sub("GET", "sobjects/Account/@{empty.records[0].Id}", "dependent"),
            sub("GET", "sobjects/Account/@{later.id}", "forward"),
            sub("POST", "sobjects/Account", "later", {"Name": "L"}),
        ],
    )
    by_ref = results(reply)
    assert by_ref["empty"]["body"]["totalSize"] == 0
    for ref in ("dependent", "forward"):
        assert by_ref[ref]["httpStatusCode"] == 400
        assert by_ref[ref]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert by_ref["later"]["httpStatusCode"] == 201


@pytest.mark.parametrize(
    ("count", "queries", "status"),
    [(25, 5, 200), (26, 0, 400), (6, 6, 400), (25, 0, 200)],
)
async def test_limits_25_subrequests_5_queries(
    api: Api, count: int, queries: int, status: int
) -> None:
    subs = [query("SELECT Id FROM Account", f"q{i}") for i in range(queries)]
    subs += [
        sub("GET", "sobjects/Account/001000000000000AAA", f"g{i}") for i in range(count - queries)
    ]
    reply = await composite(api, subs)
    assert reply.status == status, reply.body
    if status == 400:
        assert reply.body[0]["errorCode"] == "LIMIT_EXCEEDED"
        assert (await api.sim.counters())["subrequests"] == {}  # nothing ran
    else:
        assert len(reply.body["compositeResponse"]) == count
    assert used(reply) == 1  # refused or not, the request was one call


async def test_query_more_counts_as_a_query(api: Api) -> None:
    subs = [query("SELECT Id FROM Account", f"q{i}") for i in range(5)]
    subs.append(sub("GET", "query/01g000000000000AAA-2000", "more"))
    reply = await composite(api, subs)
    assert reply.status == 400
    assert reply.body[0]["errorCode"] == "LIMIT_EXCEEDED"


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"method": "GET", "url": f"{BASE}/limits"}, "JSON_PARSER_ERROR"),  # no referenceId
        ({"method": "GET", "url": f"{BASE}/limits", "referenceId": "_x"}, "INVALID_API_INPUT"),
        ({"method": "GET", "url": f"{BASE}/limits", "referenceId": "a-b"}, "INVALID_API_INPUT"),
        (
            {"method": "get", "url": f"{BASE}/sobjects/Account/x", "referenceId": "a"},
            "JSON_PARSER_ERROR",
        ),
        (
            {"method": "GET", "url": f"{BASE}/search?q=FIND%20%7Bx%7D", "referenceId": "s"},
            "INVALID_API_INPUT",
        ),
        (
            {
                "method": "GET",
                "url": f"{BASE}/sobjects/Account/x",
                "referenceId": "h",
                "httpHeaders": {"Authorization": "Bearer other"},
            },
            "INVALID_API_INPUT",
        ),
    ],
)
async def test_bad_bodies_fail_the_whole_request(api: Api, item: dict[str, Any], code: str) -> None:
    ok = sub("POST", "sobjects/Account", "first", {"Name": "never written"})
    reply = await composite(api, [ok, item])
    assert reply.status == 400
    assert reply.body[0]["errorCode"] == code
    assert await api.sim.records("Account") == []


async def test_duplicate_reference_ids_refused(api: Api) -> None:
    item = sub("GET", "sobjects/Account/001000000000000AAA", "same")
    reply = await composite(api, [item, dict(item)])
    assert reply.status == 400
    assert "Duplicate referenceId" in reply.body[0]["message"]


async def test_401_and_daily_limit_fail_the_whole_request(api: Api) -> None:
    subs = [sub("POST", "sobjects/Account", "a", {"Name": "x"})]
    reply = await api.post("composite", json={"compositeRequest": subs}, token="expired-or-bogus")
    assert reply.status == 401
    assert reply.body[0]["errorCode"] == "INVALID_SESSION_ID"
    await api.sim.set_daily_limit(10, used=10)
    reply = await composite(api, subs)
    assert reply.status == 403
    assert reply.body[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert await api.sim.records("Account") == []


async def test_subrequest_headers_reach_the_resource(api: Api) -> None:
    await api.sim.seed("Account", [{"Name": f"A{i}"} for i in range(250)])
    item = query("SELECT Id FROM Account", "page")
    item["httpHeaders"] = {"Sforce-Query-Options": "batchSize=200"}
    by_ref = results(await composite(api, [item]))
    body = by_ref["page"]["body"]
    assert len(body["records"]) == 200
    assert body["done"] is False
    more = by_ref["page"]["body"]["nextRecordsUrl"]
    rest = results(await composite(api, [{"method": "GET", "url": more, "referenceId": "m"}]))
    assert len(rest["m"]["body"]["records"]) == 50


async def test_per_subrequest_fault_rules(api: Api) -> None:
    await api.sim.add_fault(status=503, route="sobject_create", count=1)
    await api.sim.add_fault(
        status=400,
        route="sobject_update",
        body=[{"errorCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access"}],
    )
    [record] = await api.sim.seed("Account", [{"Name": "Locked"}])
    reply = await composite(
        api,
        [
            sub("POST", "sobjects/Account", "first", {"Name": "refused"}),
            sub("POST", "sobjects/Account", "second", {"Name": "written"}),
            sub("PATCH", f"sobjects/Account/{record}", "update", {"Name": "x"}),
        ],
    )
    by_ref = results(reply)
    assert by_ref["first"]["httpStatusCode"] == 503
    assert by_ref["first"]["body"][0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert by_ref["second"]["httpStatusCode"] == 201
    assert by_ref["update"]["body"][0]["errorCode"] == "UNABLE_TO_LOCK_ROW"
    names = sorted(r["Name"] for r in await api.sim.records("Account"))
    assert names == ["Locked", "written"]


async def test_fault_on_the_composite_route_hits_the_whole_request(api: Api) -> None:
    await api.sim.add_fault(status=503, route="composite")
    reply = await composite(api, [sub("POST", "sobjects/Account", "a", {"Name": "x"})])
    assert reply.status == 503
    assert await api.sim.records("Account") == []


async def test_a_held_subrequest_holds_the_whole_answer_then_runs_as_usual(api: Api) -> None:
    await api.sim.add_fault(action="hold", hold="slow", route="sobject_create")
    reply = asyncio.create_task(
        composite(
            api,
            [
                sub("POST", "sobjects/Account", "held", {"Name": "first"}),
                sub("POST", "sobjects/Account", "next", {"Name": "second"}),
            ],
        )
    )
    await api.sim.wait_held("slow")
    assert not reply.done()
    await api.sim.release("slow")
    by_ref = results(await reply)
    assert by_ref["held"]["httpStatusCode"] == 201  # held, not answered with the rule's status
    assert by_ref["next"]["httpStatusCode"] == 201


@pytest.mark.parametrize(("action", "written"), [("drop_after", 2), ("drop_before", 1)])
async def test_dropped_connection_on_a_subrequest(api: Api, action: str, written: int) -> None:
    await api.sim.add_fault(action=action, route="sobject_create", path_contains="Contact")
    subs = [
        sub("POST", "sobjects/Account", "a", {"Name": "x"}),
        sub("POST", "sobjects/Contact", "c", {"LastName": "y"}),
    ]
    with pytest.raises(aiohttp.ClientError):
        await composite(api, subs)
    records = await api.sim.records("Account") + await api.sim.records("Contact")
    assert len(records) == written


async def test_queries_inside_composite_are_recorded(api: Api) -> None:
    await composite(api, [query("SELECT Id FROM Contact WHERE Phone = '1'", "q")])
    assert (await api.sim.counters())["queries"] == ["SELECT Id FROM Contact WHERE Phone = '1'"]
