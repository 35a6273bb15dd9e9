"""The tenants of the strict-mode tests, against the real RabbitMQ with real users (created with
rabbitmqctl for each test and deleted after it): `rt-acme-<run>` and `rt-globex-<run>` publish for
tenants acme and globex, and the worker itself runs as `sfworker-<run>`, each with the
permissions of the recipe in deploy/README.md. Acme's account `main` and globex's account
`globex` talk to two separate simulators (two orgs). The fixtures are in
tests/runtime/tenancy/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika

from tests.support.job_client import JobClient
from worker.settings import Settings


@dataclass(frozen=True)
class Users:
    acme: str
    acme_url: str
    globex: str
    globex_url: str
    worker: str
    worker_url: str


@asynccontextmanager
async def client_as(
    url: str,
    settings: Settings,
    durable_queue: str | None = None,
    worker_user: str | None = None,
    tenant_queue: bool = False,
    login_user: str | None = None,
) -> AsyncIterator[JobClient]:
    """A runtime publishing with its own connection (so as its own RabbitMQ user); with
    `tenant_queue`, to its tenant's own queue; `login_user` for a certificate URL."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel(on_return_raises=True)
        client = JobClient(
            channel,
            settings,
            worker_user=worker_user,
            tenant_queue=tenant_queue,
            login_user=login_user,
        )
        await client.start(durable_queue)
        yield client


def search(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "operation": "search",
        "soql": "SELECT Id, Name FROM Contact",
        **fields,
    }
