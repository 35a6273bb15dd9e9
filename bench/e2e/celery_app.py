"""The Celery peer: a task that runs the search with simple-salesforce, as Python shops do.

Started by the benchmark as
`celery -A bench.e2e.celery_app worker --pool threads --concurrency N --prefetch-multiplier 1`:
RabbitMQ broker, the request queue a quorum queue, `acks_late` (ack after the task returned),
the result sent back with the `rpc://` backend to the reply_to queue of the task message.

The session is one process-wide simple-salesforce client built from a token fetched with a
plain POST (client_credentials; simple-salesforce's own login builds https:// URLs the
simulator does not speak). When Salesforce answers 401 (SalesforceExpiredSession), the task
logs in again and retries once, as simple-salesforce leaves that to its user.

Settings come from the environment: BENCH_AMQP_URL, BENCH_QUEUE, BENCH_SIM_URL,
BENCH_CLIENT_ID, BENCH_CLIENT_SECRET, BENCH_CONCURRENCY.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import requests
from celery import Celery
from kombu import Queue
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceExpiredSession

API_VERSION = "62.0"
_env = os.environ

app = Celery("sfbench", broker=_env.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_backend="rpc://",
    result_persistent=False,
    task_queues=[
        Queue(
            _env.get("BENCH_QUEUE", "bench-celery"),
            queue_arguments={"x-queue-type": "quorum"},
            durable=True,
        )
    ],
    task_default_queue=_env.get("BENCH_QUEUE", "bench-celery"),
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_lock = threading.Lock()  # guards the swap of the shared client only
_client: Salesforce | None = None


def _login() -> Salesforce:
    """A fresh token by a plain POST, and a client using it (base_url re-pointed to http)."""
    base = _env["BENCH_SIM_URL"]
    answer = requests.post(
        f"{base}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": _env["BENCH_CLIENT_ID"],
            "client_secret": _env["BENCH_CLIENT_SECRET"],
        },
        timeout=10,
    )
    answer.raise_for_status()
    sf = Salesforce(
        instance_url=base, session_id=answer.json()["access_token"], version=API_VERSION
    )
    sf.base_url = f"{base}/services/data/v{API_VERSION}/"
    # requests keeps 10 connections per host by default; one per worker thread instead.
    size = int(_env.get("BENCH_CONCURRENCY", "32"))
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=size)
    sf.session.mount("http://", adapter)
    return sf


def _shared() -> Salesforce:
    global _client
    with _lock:
        if _client is None:
            _client = _login()
        return _client


def _replace() -> Salesforce:
    global _client
    fresh = _login()
    with _lock:
        _client = fresh
    return fresh


@app.task(name="bench.search")
def search(job: dict[str, Any]) -> dict[str, Any]:
    sf = _shared()
    try:
        result = sf.query(job["soql"])
    except SalesforceExpiredSession:
        result = _replace().query(job["soql"])
    return {
        "job_id": job["job_id"],
        "status": "ok",
        "count": result["totalSize"],
        "records": result["records"],
    }
