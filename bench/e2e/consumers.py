"""Two small consumers the benchmark runs as processes of their own (`python -m
bench.e2e.consumers KIND`), both: aio-pika consume from a quorum queue with `prefetch`, one
search against the simulator, publish the reply with a confirm, then ack.

- `baseline`: the least such a loop can do: one aiohttp GET with a fixed token (and the
  `nextRecordsUrl` pages, if any). No deadline, no retries, no token refresh, no metrics, no logs.
- `aiosalesforce`: the same loop calling aiosalesforce (its own client-credentials flow and
  its own refresh after a 401), as an asyncio shop would write it today.

Settings come from the environment: BENCH_AMQP_URL, BENCH_QUEUE, BENCH_PREFETCH, BENCH_SIM_URL,
BENCH_TOKEN (baseline), BENCH_CLIENT_ID and BENCH_CLIENT_SECRET (aiosalesforce).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractIncomingMessage

API_VERSION = "62.0"
Search = Callable[[str, int], Awaitable[dict[str, Any]]]  # (soql, max_records) -> reply


def _batch_header(max_records: int) -> dict[str, str]:
    return {"Sforce-Query-Options": f"batchSize={min(2000, max(200, max_records))}"}


async def baseline_search(session: aiohttp.ClientSession, base: str, token: str) -> Search:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    query_url = f"{base}/services/data/v{API_VERSION}/query"

    async def search(soql: str, max_records: int) -> dict[str, Any]:
        call_headers = {**headers, **_batch_header(max_records)}
        async with session.get(query_url, params={"q": soql}, headers=call_headers) as response:
            body = orjson.loads(await response.read())
            status = response.status
        if status != 200:
            return {"status": "failed", "http_status": status}
        records = body["records"]
        while not body["done"] and len(records) < max_records:
            async with session.get(base + body["nextRecordsUrl"], headers=call_headers) as more:
                body = orjson.loads(await more.read())
            records.extend(body["records"])
        return {"status": "ok", "count": body["totalSize"], "records": records[:max_records]}

    return search


async def aiosalesforce_search(base: str, client_id: str, secret: str) -> Search:
    import aiosalesforce
    import httpx

    class LoopbackSalesforce(aiosalesforce.Salesforce):
        """The stock setter accepts only *.my.salesforce.com; nothing else is changed."""

        @property
        def base_url(self) -> str:
            return self._loopback_base_url

        @base_url.setter
        def base_url(self, value: str) -> None:
            self._loopback_base_url = value.rstrip("/")

    sf = LoopbackSalesforce(
        httpx_client=httpx.AsyncClient(),
        base_url=base,
        auth=aiosalesforce.ClientCredentialsFlow(client_id, secret),
        version=API_VERSION,
    )

    async def search(soql: str, max_records: int) -> dict[str, Any]:
        records = []
        async for record in sf.query(soql):
            records.append(record)
            if len(records) >= max_records:
                break
        return {"status": "ok", "count": len(records), "records": records}

    return search


async def serve(kind: str) -> None:
    env = os.environ
    prefetch = int(env.get("BENCH_PREFETCH", "32"))
    connection = await aio_pika.connect(env["BENCH_AMQP_URL"], timeout=10)
    consume = await connection.channel(publisher_confirms=False)
    await consume.set_qos(prefetch_count=prefetch)
    publish = await connection.channel(publisher_confirms=True)
    queue = await consume.declare_queue(env["BENCH_QUEUE"], passive=True, timeout=10)
    session = aiohttp.ClientSession()
    if kind == "baseline":
        search = await baseline_search(session, env["BENCH_SIM_URL"], env["BENCH_TOKEN"])
    else:
        search = await aiosalesforce_search(
            env["BENCH_SIM_URL"], env["BENCH_CLIENT_ID"], env["BENCH_CLIENT_SECRET"]
        )
    exchange = publish.default_exchange

    async def handle(message: AbstractIncomingMessage) -> None:
        job = orjson.loads(message.body)
        try:
            reply = await search(job["soql"], int(job.get("max_records", 200)))
        except Exception as exc:  # a peer's error still gets an answer
            reply = {"status": "failed", "error": type(exc).__name__}
        reply["job_id"] = job["job_id"]
        await exchange.publish(
            aio_pika.Message(
                orjson.dumps(reply),
                correlation_id=message.correlation_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=message.reply_to or "",
            timeout=10,
        )
        await message.ack()

    tag = await queue.consume(handle, timeout=10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{kind} consuming {queue.name} with prefetch {prefetch}", flush=True)
    await stop.wait()
    await queue.cancel(tag, timeout=10)
    await session.close()
    await connection.close()


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind not in ("baseline", "aiosalesforce"):
        print("usage: python -m bench.e2e.consumers baseline|aiosalesforce", file=sys.stderr)
        return 2
    asyncio.run(serve(kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
