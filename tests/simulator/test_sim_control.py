"""The control API and the process entry point."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import aiohttp
import pytest
from sfsim.testing import SimulatorClient, SimulatorControlError

from tests.simulator.helpers import Api, client_credentials_token


async def test_reset_restores_a_fresh_org(api: Api, sim: SimulatorClient) -> None:
    await sim.seed("Account", [{"Name": "a"}])
    await sim.add_schema("Thing__c", "a02", {"Size__c": "double"})
    await sim.set_client("other", "s")
    await sim.add_fault(status=500, count=3)
    await sim.set_daily_limit(5, used=5)
    await sim.reset()
    assert await sim.records("Account") == []
    with pytest.raises(SimulatorControlError, match="404"):
        await sim.records("Thing__c")
    counters = await sim.counters()
    assert counters["requests_total"] == 0
    assert counters["api_usage"] == {"used": 0, "max": 100000}
    assert (await api.get("limits")).status == 401  # sessions are gone too
    api.token = await client_credentials_token(api.http, sim)
    assert (await api.get("limits")).status == 200  # no faults left


async def test_counters_count_rest_answers_by_status(api: Api, sim: SimulatorClient) -> None:
    await sim.reset_counters()
    assert (await api.get("limits")).status == 200
    assert (await api.get("limits", token="not-a-session")).status == 401
    await sim.expire_sessions()
    assert (await api.get("limits")).status == 401
    assert (await sim.counters())["responses"] == {"200": 1, "401": 2}


async def test_custom_object_schema(api: Api, sim: SimulatorClient) -> None:
    await sim.add_schema(
        "Invoice__c",
        "a05",
        {
            "Amount__c": "currency",
            "Paid__c": "boolean",
            "Account__c": "reference:Account",
            "Number__c": "string",
            "Due__c": "date",
        },
        required=["Amount__c"],
        external_ids=["Number__c"],
        unique=["Number__c"],
    )
    [acme] = await sim.seed("Account", [{"Name": "Acme"}])
    created = await api.post(
        "sobjects/Invoice__c",
        json={"Name": "INV-1", "Amount__c": 10, "Account__c": acme, "Number__c": "N1"},
    )
    assert created.status == 201
    assert created.body["id"].startswith("a05")
    assert (
        await api.post("sobjects/Invoice__c", json={"Name": "x"})
    ).error_code == "REQUIRED_FIELD_MISSING"
    assert (
        await api.post("sobjects/Invoice__c", json={"Amount__c": 1, "Number__c": "n1"})
    ).error_code == "DUPLICATE_VALUE"
    reply = await api.query(
        "SELECT Name, Paid__c, Account__r.Name FROM Invoice__c WHERE Due__c = null"
    )
    assert reply.body["records"][0]["Paid__c"] is False
    assert reply.body["records"][0]["Account__r"]["Name"] == "Acme"
    upsert = await api.patch("sobjects/Invoice__c/Number__c/N1", json={"Paid__c": True})
    assert upsert.status == 200
    await sim.add_schema("Invoice__c", "a05", {"Note__c": "textarea"})
    assert (
        await api.patch(f"sobjects/Invoice__c/{created.body['id']}", json={"Note__c": "hi"})
    ).status == 204


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"object": "X__c", "prefix": "001", "fields": {}}, "already belongs to Account"),
        ({"object": "X__c", "prefix": "a09", "fields": {"F__c": "blob"}}, "unknown field type"),
        (
            {"object": "X__c", "prefix": "a09", "fields": {"F__c": "reference:Nope"}},
            "not an object",
        ),
        ({"object": "X__c", "prefix": "a09", "fields": {}, "required": ["Missing__c"]}, "no field"),
        ({"object": "X__c", "bogus": 1}, "extra"),
    ],
)
async def test_schema_errors(
    sim: SimulatorClient, http: aiohttp.ClientSession, body: dict[str, object], message: str
) -> None:
    async with http.post(f"{sim.base_url}/_sim/schema", json=body) as resp:
        assert resp.status == 400
        assert message in (await resp.json())["error"]


async def test_seed_is_validated_and_atomic(
    sim: SimulatorClient, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{sim.base_url}/_sim/records",
        json={"object": "Account", "records": [{"Name": "ok"}, {"Phone": "1"}]},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert await sim.records("Account") == []
    dup = [{"Name": "a", "External_Id__c": "E"}, {"Name": "b", "External_Id__c": "e"}]
    with pytest.raises(SimulatorControlError, match="DUPLICATE_VALUE"):
        await sim.seed("Account", dup)
    with pytest.raises(SimulatorControlError, match="404"):
        await sim.seed("Nope", [{}])


async def test_seed_can_set_history(api: Api, sim: SimulatorClient) -> None:
    await sim.seed(
        "Account",
        [
            {"Name": "old", "CreatedDate": "2020-01-01T00:00:00Z"},
            {"Name": "gone", "IsDeleted": True},
            {"Name": "new"},
        ],
    )
    records = {r["Name"]: r for r in await sim.records("Account")}
    assert records["old"]["CreatedDate"] == "2020-01-01T00:00:00.000+0000"
    assert records["gone"]["IsDeleted"] is True
    reply = await api.query("SELECT Name FROM Account WHERE CreatedDate = LAST_N_DAYS:30")
    assert [r["Name"] for r in reply.body["records"]] == ["new"]


async def test_seed_4500_quickly(sim: SimulatorClient) -> None:
    start = time.monotonic()
    ids = await sim.seed(
        "Contact", [{"LastName": f"L{i}", "Email": f"l{i}@x.example"} for i in range(4500)]
    )
    assert len(set(ids)) == 4500
    assert time.monotonic() - start < 3


async def test_bad_control_bodies(sim: SimulatorClient, http: aiohttp.ClientSession) -> None:
    for path, body in [
        ("/_sim/latency", {"ms": -1}),
        ("/_sim/faults", {"action": "explode"}),
        ("/_sim/session_timeout", {}),
        ("/_sim/clients", {"client_id": "x"}),
    ]:
        async with http.post(sim.base_url + path, json=body) as resp:
            assert resp.status == 400, path
    with pytest.raises(SimulatorControlError, match="404"):
        await sim.refresh_tokens("nobody")


async def test_run_simulator_process() -> None:
    code = "from sfsim import run_simulator; run_simulator('127.0.0.1', 0)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        assert line.startswith("simulator listening on http://127.0.0.1:")
        base = line.removeprefix("simulator listening on ")
        async with aiohttp.ClientSession() as http, http.get(f"{base}/services/data/") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
