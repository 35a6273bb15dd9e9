"""`sfworker demo`: the Salesforce simulator, a worker, and one job of each operation.

Everything runs in this process against the local RabbitMQ, on queues of its own
(`sfworker.commands.demo.*`, deleted at the end) so that it never disturbs a real deployment.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from sfsim.testing import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SimulatorClient,
    running_simulator,
)

from worker.app import Worker
from worker.client import BlockClient
from worker.commands.render import render_result, table
from worker.runtime import topology
from worker.runtime.reach import connect_amqp, endpoint
from worker.settings import Settings

DEMO_PREFIX = "sfworker.commands.demo"


async def _seed(sim: SimulatorClient) -> dict[str, str]:
    accounts = await sim.seed(
        "Account",
        [
            {"Name": "Acme Corporation", "Phone": "+1 415 555 0100", "Industry": "Manufacturing"},
            {"Name": "Globex", "Phone": "+1 212 555 0199", "Industry": "Energy"},
            {"Name": "Initech", "Phone": "+1 512 555 0142", "Industry": "Technology"},
        ],
    )
    contacts = await sim.seed(
        "Contact",
        [
            {
                "FirstName": "Ada",
                "LastName": "Lovelace",
                "Phone": "+1 415 555 0123",
                "Email": "ada@acme.example",
                "AccountId": accounts[0],
            },
            {
                "FirstName": "Grace",
                "LastName": "Hopper",
                "Phone": "+1 212 555 0177",
                "Email": "grace@globex.example",
                "AccountId": accounts[1],
            },
        ],
    )
    cases = await sim.seed(
        "Case",
        [
            {"Subject": "Delivery late", "ContactId": contacts[0], "Priority": "High"},
            {"Subject": "Invoice question", "ContactId": contacts[1], "Priority": "Low"},
        ],
    )
    return {"account": accounts[0], "contact": contacts[0], "case": cases[0], "case2": cases[1]}


def _jobs(ids: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    def job(**fields: Any) -> dict[str, Any]:
        return {"v": 1, "job_id": f"demo-{uuid.uuid4().hex[:10]}", **fields}

    return [
        (
            "Search (SOQL): caller's phone -> contact",
            job(
                operation="search",
                soql="SELECT Id, Name, Email FROM Contact WHERE Phone = :ani",
                params={"ani": "+1 415 555 0123"},
            ),
        ),
        (
            "Search (SOSL): 'hopper' in name fields",
            job(
                operation="search",
                sosl="FIND :term IN NAME FIELDS RETURNING Contact(Id, Name, Phone)",
                params={"term": "Hopper"},
            ),
        ),
        (
            "Get: the caller's open case",
            job(
                operation="get",
                object="Case",
                id=ids["case"],
                fields=["Subject", "Status", "Priority"],
            ),
        ),
        (
            "Insert: a new case for the caller",
            job(
                operation="insert",
                object="Case",
                fields={"Subject": "Callback requested", "ContactId": ids["contact"]},
            ),
        ),
        (
            "Update: raise the case priority",
            job(operation="update", object="Case", id=ids["case"], fields={"Priority": "Urgent"}),
        ),
        (
            "Upsert: a contact by external id",
            job(
                operation="upsert",
                object="Contact",
                external_id_field="Ext_Id__c",
                external_id="IVR-42",
                fields={"LastName": "Caller", "Phone": "+1 650 555 0042"},
            ),
        ),
        (
            "Delete: the second case",
            job(operation="delete", object="Case", id=ids["case2"]),
        ),
        (
            "Search with no match (the block's No Data exit)",
            job(
                operation="search",
                soql="SELECT Id FROM Contact WHERE Phone = :ani",
                params={"ani": "+1 000 000 0000"},
            ),
        ),
    ]


def _metric_rows(worker: Worker) -> list[list[Any]]:
    wanted = {
        "sfworker_jobs_total",
        "sfworker_salesforce_requests_total",
        "sfworker_token_requests_total",
        "sfworker_salesforce_api_usage_used",
        "sfworker_salesforce_api_usage_limit",
    }
    rows: list[list[Any]] = []
    for family in worker.metrics.registry.collect():
        for sample in family.samples:
            if sample.name in wanted and sample.value:
                labels = ",".join(f"{k}={v}" for k, v in sample.labels.items() if v)
                rows.append([sample.name.removeprefix("sfworker_"), labels, int(sample.value)])
    return rows


def _settings(url: str, accounts_file: Path) -> Settings:
    return Settings(
        amqp_url=url,
        accounts_file=accounts_file,
        http_port=0,
        allow_insecure_localhost=True,
        request_exchange=f"{DEMO_PREFIX}.blocks",
        request_routing_key=f"{DEMO_PREFIX}.blocks",
        request_queue=f"{DEMO_PREFIX}.blocks",
        dead_letter_exchange=f"{DEMO_PREFIX}.blocks.dlx",
        dead_letter_queue=f"{DEMO_PREFIX}.blocks.dead",
        results_exchange=f"{DEMO_PREFIX}.results",
        startup_timeout_seconds=5,
    )


async def run_demo(amqp_url: str | None) -> int:
    url = amqp_url or os.environ.get("SFWORKER_AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    # RabbitMQ first: without it, one line saying so (worker.runtime.reach.Unreachable), no more.
    connection = await connect_amqp(url)
    async with connection, running_simulator() as sim:
        ids = await _seed(sim)
        with tempfile.TemporaryDirectory() as tmp:
            accounts_file = Path(tmp) / "accounts.toml"
            accounts_file.write_text(
                "[accounts.demo]\n"
                "default = true\n"
                f'instance_url = "{sim.base_url}"\n'
                'flow = "client_credentials"\n'
                f'client_id = "{DEFAULT_CLIENT_ID}"\n'
                f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n',
                encoding="utf-8",
            )
            settings = _settings(url, accounts_file)
            print(f"Salesforce simulator on {sim.base_url}; RabbitMQ at {endpoint(url)}\n")
            worker = Worker(settings)
            client = BlockClient(
                await connection.channel(on_return_raises=True),
                exchange=settings.request_exchange,
                routing_key=settings.request_routing_key,
            )
            await client.start()
            try:
                await worker.start()
                for title, job in _jobs(ids):
                    result = await client.call(job, wait=20)
                    print(f"== {title}")
                    print(render_result(result.model_dump(mode="json")))
                    print()
                print("== Key metrics")
                print(table(_metric_rows(worker), ["metric", "labels", "value"]))
            finally:
                await client.close()
                await worker.stop()
                await topology.delete(await connection.channel(), settings)
    return 0
