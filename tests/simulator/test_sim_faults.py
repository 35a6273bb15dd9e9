"""Fault injection, latency, usage limits, the Sforce-Limit-Info header and counters."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from sfsim import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sfsim.testing import SimulatorClient, SimulatorControlError

from tests.simulator.helpers import Api, token_request

LIMIT_RE = re.compile(r"api-usage=(\d+)/(\d+); per-app-api-usage=(\d+)/(\d+)\(appName=sfworker\)")


async def test_limit_info_header_counts_every_rest_call(api: Api) -> None:
    used = []
    for reply in [
        await api.get("limits"),
        await api.post("sobjects/Account", json={"Name": "a"}),
        await api.post("sobjects/Account", json={}),  # errors count too
        await api.query("SELECT Id FROM Nope"),
    ]:
        match = LIMIT_RE.fullmatch(reply.headers["Sforce-Limit-Info"])
        assert match, reply.headers["Sforce-Limit-Info"]
        assert match.group(2) == "100000"
        used.append(int(match.group(1)))
    assert used == [1, 2, 3, 4]
    unauthenticated = await api.get("limits", token="bogus")
    assert unauthenticated.status == 401
    assert unauthenticated.headers["Sforce-Limit-Info"] == "api-usage=4/100000"
    counters = await api.sim.counters()
    assert counters["api_usage"] == {"used": 4, "max": 100000}


async def test_daily_limit(api: Api) -> None:
    await api.sim.set_daily_limit(10, used=9)
    assert (await api.get("limits")).status == 200
    reply = await api.get("limits")
    assert reply.status == 403
    assert reply.body == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert reply.headers["Sforce-Limit-Info"].startswith("api-usage=10/10")
    await api.sim.set_daily_limit(11)
    assert (await api.get("limits")).status == 200


async def test_respond_fault_with_count(api: Api) -> None:
    await api.sim.add_fault(status=503, count=2, route="query")
    first = await api.query("SELECT Id FROM Account")
    second = await api.query("SELECT Id FROM Account")
    third = await api.query("SELECT Id FROM Account")
    assert [r.status for r in (first, second, third)] == [503, 503, 200]
    assert first.body == [{"message": "server too busy", "errorCode": "SERVER_UNAVAILABLE"}]
    assert "Sforce-Limit-Info" in first.headers
    assert (await api.get("limits")).status == 200  # other routes untouched


async def test_respond_fault_custom_body_headers_and_matching(api: Api) -> None:
    body = [
        {
            "message": "unable to obtain exclusive access to this record",
            "errorCode": "UNABLE_TO_LOCK_ROW",
        }
    ]
    await api.sim.add_fault(
        status=400, body=body, method="PATCH", path_contains="/sobjects/Account/"
    )
    await api.sim.add_fault(
        status=500,
        body="<html>oops</html>",
        route="limits",
        headers={"Sforce-Limit-Info": "api-usage=1/2", "Retry-After": "3"},
    )
    record_id = (await api.post("sobjects/Account", json={"Name": "a"})).body["id"]
    locked = await api.patch(f"sobjects/Account/{record_id}", json={"Name": "b"})
    assert (locked.status, locked.body) == (400, body)
    assert (await api.get(f"sobjects/Account/{record_id}")).body["Name"] == "a"  # not processed
    async with api.http.get(
        f"{api.base}/limits", headers={"Authorization": f"Bearer {api.token}"}
    ) as resp:
        assert resp.status == 500
        assert await resp.text() == "<html>oops</html>"
        assert resp.headers["Sforce-Limit-Info"] == "api-usage=1/2"
        assert resp.headers["Retry-After"] == "3"


async def test_first_matching_rule_wins_and_clear(api: Api) -> None:
    await api.sim.add_fault(status=502, route="limits")
    await api.sim.add_fault(status=504)
    assert (await api.get("limits")).status == 502
    assert (await api.get("limits")).status == 504
    await api.sim.add_fault(status=500, count=5)
    await api.sim.clear_faults()
    assert (await api.get("limits")).status == 200


async def test_drop_after_writes_then_disconnects(api: Api) -> None:
    await api.sim.add_fault(action="drop_after", route="sobject_create")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await api.post("sobjects/Account", json={"Name": "written anyway"})
    assert [r["Name"] for r in await api.sim.records("Account")] == ["written anyway"]
    assert (await api.sim.counters())["api_usage"]["used"] == 1
    assert (await api.post("sobjects/Account", json={"Name": "next"})).status == 201


async def test_drop_before_disconnects_without_processing(api: Api) -> None:
    await api.sim.add_fault(action="drop_before", method="POST")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await api.post("sobjects/Account", json={"Name": "never"})
    assert await api.sim.records("Account") == []
    assert (await api.sim.counters())["api_usage"]["used"] == 0


async def test_a_fault_can_target_one_request_by_its_body(api: Api) -> None:
    await api.sim.add_fault(status=503, count=2, body_contains="job-7", route="sobject_create")
    other = await api.post("sobjects/Account", json={"Name": "job-70x"})
    assert other.status == 503  # "job-7" is in "job-70x": the test's markers must not nest
    assert (await api.post("sobjects/Account", json={"Name": "job-8"})).status == 201
    hit = await api.post("sobjects/Account", json={"Name": "job-7"})
    assert hit.status == 503
    assert (await api.post("sobjects/Account", json={"Name": "job-7"})).status == 201
    assert sorted(r["Name"] for r in await api.sim.records("Account")) == ["job-7", "job-8"]


async def test_a_delay_fault_answers_normally_after_its_delay(api: Api) -> None:
    await api.sim.add_fault(action="delay", delay_ms=1000, path_contains="slowone")
    started = time.monotonic()
    slow = asyncio.create_task(api.query("SELECT Id FROM Account WHERE Name = 'slowone'"))
    fast = await api.query("SELECT Id FROM Account WHERE Name = 'other'")
    assert not slow.done()  # the other request is not delayed behind it
    assert (await slow).status == fast.status == 200
    assert time.monotonic() - started >= 1.0  # a lower bound: never late on a loaded machine
    assert (await api.sim.counters())["api_usage"]["used"] == 2


async def test_token_endpoint_faults_by_grant_type(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    await sim.add_fault(status=503, route="token", grant_type="refresh_token")
    creds = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    status, _ = await token_request(http, sim, grant_type="client_credentials", **creds)
    assert status == 200
    status, body = await token_request(
        http, sim, grant_type="refresh_token", refresh_token="sim-refresh-token", **creds
    )
    assert (status, body) == (
        503,
        {"error": "unknown_error", "error_description": "retry your request"},
    )
    await sim.add_fault(action="drop_before", route="token")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await token_request(http, sim, grant_type="client_credentials", **creds)


async def test_control_routes_are_never_faulted_or_counted(api: Api) -> None:
    await api.sim.add_fault(status=500, count=10)
    await api.sim.hold("all", count=10)  # a held control call would never answer
    await api.sim.set_latency(60_000)
    async with asyncio.timeout(10):
        assert await api.sim.records("Account") == []
    assert (await api.sim.holds())["all"]["arrived"] == 0
    counters = await api.sim.counters()
    assert counters["requests_total"] == 1  # only the fixture's token request
    assert counters["api_usage"]["used"] == 0


async def test_latency(api: Api) -> None:
    await api.sim.set_latency(150, jitter_ms=50)
    start = time.monotonic()
    assert (await api.get("limits")).status == 200
    assert time.monotonic() - start >= 0.15  # lower bounds only (bench/timing.py: overshoot)
    await api.sim.set_latency(0, token_ms=200)
    start = time.monotonic()
    status, _ = await token_request(
        api.http,
        api.sim,
        grant_type="client_credentials",
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    assert status == 200
    assert time.monotonic() - start >= 0.2


async def test_counters(api: Api) -> None:
    sim = api.sim
    await sim.reset_counters()
    await token_request(
        api.http,
        sim,
        grant_type="refresh_token",
        refresh_token="sim-refresh-token",
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
    )
    await token_request(api.http, sim, grant_type="nope")
    await api.query("SELECT Id FROM Account WHERE Name = 'it''s'")
    await api.get("search", params={"q": "FIND {caf\u00e9} RETURNING Account"})
    await api.get("queryAll", params={"q": "SELECT Id FROM Account"})
    await api.post("sobjects/Account", json={"Name": "a"})
    counters = await sim.counters()
    assert counters["token_requests"] == {"refresh_token": 1, "nope": 1}
    assert counters["token_requests_total"] == 2
    assert counters["requests"] == {
        "token": 2,
        "query": 1,
        "search": 1,
        "query_all": 1,
        "sobject_create": 1,
    }
    assert counters["requests_total"] == 6
    assert counters["queries"] == [
        "SELECT Id FROM Account WHERE Name = 'it''s'",
        "FIND {caf\u00e9} RETURNING Account",
        "SELECT Id FROM Account",
    ]
    assert counters["in_flight"] == 0
    await sim.reset_counters()
    assert (await sim.counters())["requests_total"] == 0


async def test_max_concurrency(api: Api) -> None:
    await api.sim.reset_counters()
    await api.sim.set_latency(300)
    replies = await asyncio.gather(*(api.get("limits") for _ in range(8)))
    assert {r.status for r in replies} == {200}
    counters = await api.sim.counters()
    assert counters["max_concurrency"] == 8
    assert counters["in_flight"] == 0


async def test_drop_before_on_get_is_resent_once_by_aiohttp_itself(api: Api) -> None:
    """aiohttp re-sends an idempotent request (GET, PUT, DELETE) once after a disconnect, so a
    single drop on a GET is invisible to an aiohttp caller; the counters show both requests."""
    await api.sim.add_fault(action="drop_before", route="limits")
    assert (await api.get("limits")).status == 200
    assert (await api.sim.counters())["requests"]["limits"] == 2
    await api.sim.add_fault(action="drop_before", route="limits", count=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await api.get("limits")


async def test_a_hold_keeps_matching_requests_until_released(api: Api) -> None:
    await api.sim.hold("slow", count=2, path_contains="holdme")
    held = [
        asyncio.create_task(api.query("SELECT Id FROM Account WHERE Name = 'holdme'"))
        for _ in range(2)
    ]
    await api.sim.wait_held("slow", count=2)
    other = await api.query("SELECT Id FROM Account WHERE Name = 'other'")  # not held
    assert other.status == 200
    assert not any(task.done() for task in held)
    assert (await api.sim.holds())["slow"] == {"arrived": 2, "waiting": 2, "released": False}
    await api.sim.release("slow")
    replies = await asyncio.gather(*held)
    assert [r.status for r in replies] == [200, 200]
    assert (await api.sim.holds())["slow"] == {"arrived": 2, "waiting": 0, "released": True}
    assert (await api.query("SELECT Id FROM Account WHERE Name = 'holdme'")).status == 200


async def test_a_reset_or_clear_lets_held_requests_go(api: Api) -> None:
    await api.sim.hold(route="limits")
    held = asyncio.create_task(api.get("limits"))
    await api.sim.wait_held()
    await api.sim.clear_faults()
    assert (await held).status == 200
    with pytest.raises(SimulatorControlError, match="unknown hold 'nope'"):
        await api.sim.release("nope")
