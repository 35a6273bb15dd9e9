"""Issue 29, point 1: every API version the worker accepts is read right.

Recorded answers (tests/data/salesforce/answers.json, each with its source) are replayed through
the client on every version they stand for: the simulator answers the call with the recorded
status and body (a fault rule), and the job's result is checked. Then the simulator itself,
answering per the version in the URL as Salesforce does: a SOSL search on v36.0 (a bare array),
an upsert that updates before and from v46.0, and no Composite request below v38.0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from tests.support import ROOT
from tests.support.accounts import write_accounts
from tests.support.harness import Harness, open_harness
from worker.accounts import ConfigError, load_accounts
from worker.contract import Operation
from worker.salesforce import composite
from worker.salesforce.errors import Verdict, classify
from worker.settings import Settings

DATA = json.loads((ROOT / "tests/data/salesforce/answers.json").read_text(encoding="utf-8"))
RawGet = Callable[[str, str], Awaitable[tuple[int, Any]]]
REPLAYS = [(answer, version) for answer in DATA["answers"] for version in answer["versions"]]


def _harness_on(
    version: str, settings: Settings, simulator: SimulatorClient, tmp_path: Path
) -> AbstractAsyncContextManager[Harness]:
    """A client on the simulator for an account of API `version`."""
    path = write_accounts(
        tmp_path / f"v{version}.toml", simulator.base_url, extra=f'api_version = "{version}"\n'
    )
    return open_harness(settings, path)


@asynccontextmanager
async def _raw(simulator: SimulatorClient) -> AsyncIterator[RawGet]:
    """GET `/services/data/{version}{path}` on the simulator with a token of its own:
    (status, JSON body)."""
    base = simulator.base_url
    async with aiohttp.ClientSession() as session:
        form = {
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        }
        async with session.post(f"{base}/services/oauth2/token", data=form) as response:
            token = (await response.json())["access_token"]

        async def get(version: str, path: str) -> tuple[int, Any]:
            url = f"{base}/services/data/{version}{path}"
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(url, headers=headers) as response:
                return response.status, await response.json(content_type=None)

        yield get


@pytest.mark.parametrize(
    ("answer", "version"), REPLAYS, ids=[f"{a['name']}@{v}" for a, v in REPLAYS]
)
async def test_a_recorded_answer_is_read_right_on_its_versions(
    answer: dict[str, Any],
    version: str,
    sf_settings: Settings,
    simulator: SimulatorClient,
    tmp_path: Path,
) -> None:
    for reply in answer["replies"]:
        await simulator.add_fault(status=reply["status"], body=reply["body"], route=reply["route"])
    async with _harness_on(version, sf_settings, simulator, tmp_path) as sf:
        result = await sf.run(**answer["job"])
    expect = answer["expect"]
    assert result.status.value == expect["status"], result.error
    if "count" in expect:
        assert result.count == expect["count"]
    if "records" in expect:
        assert len(result.records or []) == expect["records"]
    if "first_id" in expect:
        assert result.records
        assert result.records[0]["Id"] == expect["first_id"]
    if "id" in expect:
        assert result.id == expect["id"]
    if "created" in expect:
        assert result.created is expect["created"]
    if "code" in expect:
        assert result.error is not None
        assert result.error.code.value == expect["code"]
    if "http_status" in expect:
        assert result.http_status == expect["http_status"]


COMPOSITES = [(entry, version) for entry in DATA["composite"] for version in entry["versions"]]


@pytest.mark.parametrize(
    ("entry", "version"), COMPOSITES, ids=[f"{e['name']}@{v}" for e, v in COMPOSITES]
)
def test_a_recorded_composite_answer_is_read_per_call(entry: dict[str, Any], version: str) -> None:
    operations = [Operation(op) for op in entry["operations"]]
    subanswers = composite.answers(entry["body"], len(operations))
    assert subanswers is not None
    for sub, operation, expect in zip(subanswers, operations, entry["expect"], strict=True):
        assert sub.status == expect["status"]
        assert classify(sub.status, sub.body, operation).verdict is Verdict(expect["verdict"])
        if "id" in expect:
            assert isinstance(sub.body, dict)
            assert sub.body["id"] == expect["id"]


# --- the simulator answers per version, and the worker reads both shapes ----------------------


@pytest.mark.parametrize("version", ["36.0", "37.0", "62.0"])
async def test_a_sosl_search_finds_the_records_on_every_version(
    version: str, sf_settings: Settings, simulator: SimulatorClient, tmp_path: Path
) -> None:
    [contact] = await simulator.seed("Contact", [{"FirstName": "Ada", "LastName": "Lovelace"}])
    async with _harness_on(version, sf_settings, simulator, tmp_path) as sf:
        result = await sf.run(
            operation="search", sosl="FIND {Lovelace} RETURNING Contact(Id, Name)"
        )
    assert (result.status.value, result.count) == ("ok", 1)
    assert result.records is not None
    assert result.records[0]["Id"] == contact


@pytest.mark.parametrize(("version", "has_id"), [("45.0", False), ("46.0", True)])
async def test_an_upsert_that_updates_is_ok_and_not_created_before_and_from_46(
    version: str, has_id: bool, sf_settings: Settings, simulator: SimulatorClient, tmp_path: Path
) -> None:
    [contact] = await simulator.seed("Contact", [{"LastName": "Lovelace", "Ext_Id__c": "E-1"}])
    upsert = {
        "operation": "upsert",
        "object": "Contact",
        "external_id_field": "Ext_Id__c",
        "external_id": "E-1",
        "fields": {"LastName": "Byron"},
    }
    async with _harness_on(version, sf_settings, simulator, tmp_path) as sf:
        updated = await sf.run(**upsert)
        created = await sf.run(**{**upsert, "external_id": "E-2"})
    # Before v46.0 Salesforce answers an update 204 without a body: no id to give.
    assert (updated.status.value, updated.created, updated.http_status) == (
        "ok",
        False,
        200 if has_id else 204,
    )
    assert updated.id == (contact if has_id else None)
    assert (created.status.value, created.created, created.http_status) == ("ok", True, 201)
    assert created.id


async def test_below_38_calls_go_alone_without_composite(
    sf_settings: Settings, simulator: SimulatorClient, tmp_path: Path
) -> None:
    ids = await simulator.seed("Contact", [{"LastName": f"Alone{i}"} for i in range(6)])
    await simulator.set_latency(30)
    async with _harness_on("37.0", sf_settings, simulator, tmp_path) as sf:
        await simulator.reset_counters()
        results = await asyncio.gather(
            *(sf.run(operation="get", object="Contact", id=rid) for rid in ids)
        )
    assert [r.status.value for r in results] == ["ok"] * len(ids)
    seen = await simulator.counters()
    assert seen["requests"].get("composite", 0) == 0
    assert seen["requests"].get("sobject_get", 0) == len(ids)


async def test_the_simulator_answers_each_version_in_its_shape(simulator: SimulatorClient) -> None:
    """Salesforce's shapes by version, as the simulator gives them (checked over raw HTTP)."""
    async with _raw(simulator) as get:
        bare = await get("v36.0", "/search?q=FIND+%7BNobody%7D")
        wrapped = await get("v37.0", "/search?q=FIND+%7BNobody%7D")
        composite_37 = await get("v37.0", "/composite")
    assert bare == (200, [])
    assert wrapped == (200, {"searchRecords": []})
    assert composite_37[0] == 404


def test_versions_salesforce_no_longer_serves_are_refused_at_start(tmp_path: Path) -> None:
    path = write_accounts(
        tmp_path / "old.toml", "http://127.0.0.1:1", extra='api_version = "30.0"\n'
    )
    with pytest.raises(ConfigError, match=r"api_version.*31\.0 or later"):
        load_accounts(path, allow_insecure_localhost=True)
    path = write_accounts(
        tmp_path / "ok.toml", "http://127.0.0.1:1", extra='api_version = "31.0"\n'
    )
    assert load_accounts(path, allow_insecure_localhost=True).by_name["main"].api_version == "31.0"
