"""Issue 16.3: data from outside is refused, not followed. A `nextRecordsUrl` that leaves the
account's instance is SALESFORCE_ERROR and the bearer token never reaches the other host;
`.` and `..` as a record id or external id value are INVALID_REQUEST before Salesforce is
called. Through the real queue."""

from __future__ import annotations

from typing import Any

import pytest
from sfsim.testing import SimulatorClient

from tests.support.eavesdropper import eavesdropper
from tests.support.job_client import JobClient
from worker.app import Worker

PAGE = "/services/data/v60.0/query/01gD0000000abcdEFG-200"


def first_page(next_url: str) -> dict[str, Any]:
    record = {"attributes": {"type": "Contact", "url": "/x"}, "Id": "003000000000001AAA"}
    return {"totalSize": 400, "done": False, "records": [record], "nextRecordsUrl": next_url}


@pytest.mark.parametrize(
    "shape",
    ["absolute", "userinfo", "protocol_relative", "dot_segments", "encoded_dots", "backslash"],
)
async def test_a_next_page_off_the_instance_is_refused_and_gets_no_token(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient, shape: str
) -> None:
    async with eavesdropper() as spy:
        host = spy.base_url.removeprefix("http://")
        next_url = {
            "absolute": f"{spy.base_url}{PAGE}",
            "userinfo": f"@{host}{PAGE}",
            "protocol_relative": f"//{host}{PAGE}",
            "dot_segments": "/services/data/v60.0/../../../steal",
            "encoded_dots": "/services/data/%2e%2e/%2e%2e/steal",
            "backslash": f"/services/data/v60.0\\@{host}/query",
        }[shape]
        await simulator.add_fault(status=200, body=first_page(next_url), route="query", count=1)
        result = await jobs.call(
            {
                "v": 1,
                "job_id": f"hostile-next-{shape}",
                "operation": "search",
                "soql": "SELECT Id FROM Contact",
                "max_records": 2000,
            }
        )
        assert result["status"] == "failed"
        assert result["error"]["code"] == "SALESFORCE_ERROR"
        assert "next page" in result["error"]["message"]
        assert spy.seen == []
        # Only the first page was asked for: nothing followed the hostile link.
        asked = set((await simulator.counters())["requests"])
        assert asked <= {"token", "query", "composite", "limits"}, asked


async def test_a_next_page_on_the_instance_is_still_followed(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient
) -> None:
    await simulator.set_query_batch_max(200)
    await simulator.seed("Contact", [{"LastName": f"L{i}"} for i in range(450)])
    result = await jobs.call(
        {
            "v": 1,
            "job_id": "friendly-next",
            "operation": "search",
            "soql": "SELECT Id FROM Contact",
            "max_records": 2000,
        }
    )
    assert (result["status"], result["count"], len(result["records"])) == ("ok", 450, 450)


@pytest.mark.parametrize("value", [".", ".."])
@pytest.mark.parametrize("operation", ["get", "update", "delete", "upsert"])
async def test_dot_segments_as_ids_are_invalid_and_never_sent(
    worker: Worker, jobs: JobClient, simulator: SimulatorClient, operation: str, value: str
) -> None:
    job: dict[str, Any] = {
        "v": 1,
        "job_id": f"dots-{operation}-{len(value)}",
        "operation": operation,
        "object": "Contact",
    }
    if operation == "upsert":
        job |= {"external_id_field": "Ext_Id__c", "external_id": value, "fields": {"A__c": 1}}
    else:
        job["id"] = value
        if operation == "update":
            job["fields"] = {"LastName": "X"}
    result = await jobs.call(job)
    assert result["status"] == "failed"
    assert result["error"]["code"] == "INVALID_REQUEST"
    assert (await simulator.counters())["requests_total"] == 0
