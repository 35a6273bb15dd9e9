"""Tenant A of the flood section (bench/e2e/flood.py), in a process of its own as a tenant's
runtime is, so that its 10,000 results never share an event loop with the one timing tenant B.

Connects as its RabbitMQ user (`BENCH_AMQP_URL`), publishes `BENCH_JOBS` searches of account
`BENCH_ACCOUNT` at once (in chunks of 500, each publish confirmed) either to the shared request
exchange or, with `BENCH_TENANT_QUEUE=1`, to its tenant's own queue; prints
`published <unix time>` once the broker has confirmed them all; collects every result (up to
`BENCH_WAIT` seconds after that) and writes its figures as JSON to `BENCH_OUT`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.e2e.jobs import search_job
from worker.client import BlockClient, QueueFull

CHUNK = 500


async def flood() -> dict[str, Any]:
    env = os.environ
    jobs = int(env["BENCH_JOBS"])
    expected = int(env["BENCH_EXPECTED"])
    wait = float(env["BENCH_WAIT"])
    arrived: dict[str, float] = {}
    async with BlockClient.connect(
        env["BENCH_AMQP_URL"],
        exchange=env["BENCH_EXCHANGE"],
        routing_key=env["BENCH_ROUTING_KEY"],
        tenant_queue=env["BENCH_TENANT_QUEUE"] == "1",
        tenant_exchange=env["BENCH_TENANT_EXCHANGE"],
        publish_timeout=60.0,
    ) as client:
        client.add_listener(lambda r: arrived.setdefault(str(r.get("job_id")), time.time()))
        ids = [f"{env['BENCH_TAG']}-a-{i}" for i in range(jobs)]
        taken: list[str] = []
        refused = 0
        failed: Counter[str] = Counter()
        started = time.time()
        for start in range(0, jobs, CHUNK):
            done = await asyncio.gather(
                *(
                    client.publish(
                        search_job(job_id, env["BENCH_ACCOUNT"], 60_000, env["BENCH_SOQL"])
                    )
                    for job_id in ids[start : start + CHUNK]
                ),
                return_exceptions=True,
            )
            for outcome in done:
                if isinstance(outcome, QueueFull):
                    refused += 1
                elif isinstance(outcome, BaseException):
                    failed[type(outcome).__name__] += 1
                else:
                    taken.append(outcome)
        published = time.time()
        print(f"published {published}", flush=True)

        async def one(correlation: str) -> str:
            left = max(0.1, published + wait - time.time())
            try:
                result = await client.raw_result(correlation, left)
            except TimeoutError:
                return "unanswered"
            code = (result.get("error") or {}).get("code")
            if code:
                return str(code)
            if result.get("status") == "ok" and len(result.get("records") or []) == expected:
                return "ok"
            return f"wrong ({result.get('status')})"

        outcomes = Counter(await asyncio.gather(*(one(c) for c in taken)))
    answered = [arrived[c] for c in taken if c in arrived]
    return {
        "jobs": jobs,
        "started": started,
        "published": published,
        "last_result": max(answered) if answered else None,
        "outcomes": dict(outcomes),
        "refused": refused,
        "publish_failed": dict(failed),
    }


def main() -> int:
    figures = asyncio.run(flood())
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(figures), encoding="utf-8")
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
