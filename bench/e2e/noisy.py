"""Noisy neighbour (issue 17): one sfworker process, two orgs (a simulator each). Account
`slow` answers in 3,000 ms and gets 500 jobs at once; account `quick` answers in 50 ms and gets
20 jobs a second while the flood is served. What `quick`'s callers wait (p50, p99, max), whether
every `slow` job is answered (ok, or TIMEOUT when its deadline passed) and how long the flood
takes, with the fair share on (the default: a lane per account) and off (one queue, one prefetch).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SimulatorClient

from bench.e2e.broker import Broker
from bench.e2e.jobs import search_job
from bench.e2e.procs import start_simulator
from bench.e2e.runs import percentile
from bench.e2e.systems import Context, Sfworker, SfworkerOptions
from worker.client import BlockClient

SLOW_LATENCY_MS = 3000
QUICK_LATENCY_MS = 50
SLOW_JOBS = 500
SLOW_TIMEOUT_MS = 60_000
QUICK_RATE = 20


def _accounts(path: Path, slow_url: str, quick_url: str) -> None:
    lines = []
    for name, url, tenant in (("slow", slow_url, "acme"), ("quick", quick_url, "globex")):
        lines += [
            f"[accounts.{name}]",
            f'tenant = "{tenant}"',
            f'instance_url = "{url}"',
            'flow = "client_credentials"',
            f'client_id = "{DEFAULT_CLIENT_ID}"',
            f'client_secret = "{DEFAULT_CLIENT_SECRET}"',
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")


async def _timed(client: BlockClient, job: dict[str, Any], wait: float) -> tuple[float, str]:
    started = time.monotonic()
    try:
        result = await client.raw_result(await client.publish(job), wait)
    except TimeoutError:
        return time.monotonic() - started, "unanswered"
    code = (result.get("error") or {}).get("code")
    return time.monotonic() - started, code or str(result.get("status"))


async def noisy_trial(
    ctx: Context, broker: Broker, fair_share: bool, quick_seconds: int
) -> dict[str, Any]:
    """One run of the scenario; the flood's results are awaited up to its deadline plus 30 s."""
    sims = [start_simulator("sim-slow"), start_simulator("sim-quick")]
    clients = [SimulatorClient(url) for _, url in sims]
    tag = f"noisy-{'on' if fair_share else 'off'}"
    system = Sfworker(
        ctx,
        tag,
        SfworkerOptions(
            env={"SFWORKER_FAIR_SHARE": str(fair_share).lower()},
            label=f"sfworker, fair share {'on' if fair_share else 'off'}",
        ),
    )
    _accounts(system.accounts, sims[0][1], sims[1][1])
    try:
        for sim in clients:
            await sim.seed("Account", [{"Name": "Acme"}])
        await clients[0].set_latency(SLOW_LATENCY_MS, token_ms=0)
        await clients[1].set_latency(QUICK_LATENCY_MS, token_ms=0)
        await system.prepare(broker)
        system.start()
        async with BlockClient.connect(
            ctx.amqp_url, exchange=system.queue, routing_key=system.queue
        ) as client:
            # Tokens first (the measure is not about tokens), and the worker is up.
            await asyncio.gather(
                _timed(client, search_job(f"{tag}-warm-q", "quick", 30_000), 60),
                _timed(client, search_job(f"{tag}-warm-s", "slow", 30_000), 60),
            )
            flood_start = time.monotonic()
            published = await asyncio.gather(
                *(
                    client.publish(search_job(f"{tag}-slow-{i}", "slow", SLOW_TIMEOUT_MS))
                    for i in range(SLOW_JOBS)
                )
            )
            slow = [
                asyncio.create_task(client.raw_result(c, SLOW_TIMEOUT_MS / 1000 + 30))
                for c in published
            ]
            quick: list[asyncio.Task[tuple[float, str]]] = []
            start = time.monotonic()
            for i in range(QUICK_RATE * quick_seconds):
                await asyncio.sleep(max(0.0, start + i / QUICK_RATE - time.monotonic()))
                job = search_job(f"{tag}-quick-{i}", "quick", 30_000)
                quick.append(asyncio.create_task(_timed(client, job, 90)))
            quick_done = await asyncio.gather(*quick)
            slow_done = await asyncio.gather(*slow, return_exceptions=True)
            flood_seconds = time.monotonic() - flood_start
        latencies = sorted(seconds * 1000 for seconds, _ in quick_done)
        outcomes: dict[str, int] = {}
        for result in slow_done:
            if isinstance(result, BaseException):
                key = "unanswered"
            else:
                key = (result.get("error") or {}).get("code") or str(result.get("status"))
            outcomes[key] = outcomes.get(key, 0) + 1
        dead = await broker.depth(system.names["DEAD_LETTER_QUEUE"])
        return {
            "system": system.label,
            "fair_share": fair_share,
            "quick_jobs": len(quick_done),
            "quick_p50_ms": percentile(latencies, 50),
            "quick_p99_ms": percentile(latencies, 99),
            "quick_max_ms": latencies[-1] if latencies else 0.0,
            "quick_failed": sum(1 for _, status in quick_done if status != "ok"),
            "slow_jobs": SLOW_JOBS,
            "slow_outcomes": outcomes,
            "slow_seconds": flood_seconds,
            "dead_lettered": dead,
        }
    finally:
        system.stop()
        await system.cleanup(broker)
        await broker.delete([f"{system.queue}.lane.{name}" for name in ("slow", "quick")])
        for sim in clients:
            await sim.close()
        for child, _ in sims:
            child.stop()
