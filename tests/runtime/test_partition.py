"""Acceptance (issue 19, point 1): a worker cut off from RabbitMQ without a word (a partition:
the TCP connection stays open, nothing goes through) gives its jobs back within seconds.

Two workers at their default settings (prefetch 128), one reaching the broker through a TCP
proxy that stalls 3 s into a run of 400 searches at 20 jobs a second, each with an 8 s deadline.
Every job is answered within its deadline, exactly once, also after the link comes back (the
runtime's client does not drop duplicates: what it receives is what the workers sent)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from sfsim.testing import SimulatorClient

from tests.support.accounts import write_accounts
from tests.support.job_client import JobClient
from tests.support.metrics import metric
from tests.support.settings import make_settings
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess
from worker.app import Worker
from worker.settings import AMQP_HEARTBEAT_SECONDS, Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

JOBS = 400
PACE = 0.05  # 20 jobs a second
TIMEOUT_MS = 8000
STALL_AT = 3.0


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{port}").geturl()


def _published(text: str) -> float:
    return metric(text, "sfworker_results_published_total", destination="reply_to")


@pytest.fixture
async def broker_proxy(amqp_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.cut()


async def _ready(worker: WorkerProcess, http: aiohttp.ClientSession) -> bool:
    try:
        async with asyncio.timeout(2), http.get(f"{worker.url}/readyz") as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_a_partitioned_worker_gives_its_jobs_back_within_their_deadline(
    amqp_url: str,
    names: dict[str, str],
    accounts_file: Path,
    settings: Settings,
    jobs: JobClient,
    spawn_worker: Any,
    broker_proxy: TcpProxy,
) -> None:
    # Default settings but for the prefetch of the report (watchdog and reconnect pace too).
    defaults = {"prefetch": 128, "watchdog_interval_seconds": 5, "reconnect_interval_seconds": 2}
    direct = make_settings(amqp_url, names, accounts_file, **defaults)
    proxied = make_settings(
        _with_port(amqp_url, broker_proxy.port), names, accounts_file, **defaults
    )
    assert direct.amqp_heartbeat_seconds == AMQP_HEARTBEAT_SECONDS
    cut_off: WorkerProcess = spawn_worker(proxied)
    other: WorkerProcess = spawn_worker(direct)
    await asyncio.gather(cut_off.wait_ready(30), other.wait_ready(30))

    published: dict[str, float] = {}
    answered: dict[str, float] = {}
    jobs.client.add_listener(lambda r: answered.setdefault(str(r["job_id"]), time.monotonic()))
    not_ready_at: list[float] = []
    stalled_at = 0.0

    async def load() -> None:
        start = time.monotonic()
        for i in range(JOBS):
            await asyncio.sleep(max(0.0, start + i * PACE - time.monotonic()))
            job_id = f"part-{i}"
            await jobs.publish(
                {
                    "v": 1,
                    "job_id": job_id,
                    "operation": "search",
                    "timeout_ms": TIMEOUT_MS,
                    "soql": "SELECT Id FROM Case WHERE Subject = :s",
                    "params": {"s": job_id},
                }
            )
            published[job_id] = time.monotonic()

    async def partition(http: aiohttp.ClientSession) -> None:
        nonlocal stalled_at
        await asyncio.sleep(STALL_AT)
        broker_proxy.stall()
        stalled_at = time.monotonic()
        while not not_ready_at and time.monotonic() - stalled_at < 20:
            if not await _ready(cut_off, http):
                not_ready_at.append(time.monotonic())
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as http:
        await asyncio.wait_for(asyncio.gather(load(), partition(http)), 60)

        async def all_answered() -> bool:
            return len(answered) >= JOBS

        await wait_until(all_answered, 30, "every job answered")
        assert broker_proxy.stalled  # all of it happened while the link was cut

        # The link comes back: the cut-off worker reconnects, is ready again and takes jobs.
        broker_proxy.resume()

        async def back() -> bool:
            return await _ready(cut_off, http)

        await wait_until(back, 60, "the cut-off worker ready again")
        before = _published(await cut_off.metrics())
        probes = [f"probe-{i}" for i in range(40)]
        for job_id in probes:
            await jobs.publish(
                {"v": 1, "job_id": job_id, "operation": "search", "soql": "SELECT Id FROM Case"}
            )

        async def probes_answered() -> bool:
            return set(probes) <= set(answered)

        await wait_until(probes_answered, 30, "the jobs sent after the partition answered")
        after_a = await cut_off.metrics()
        after_b = await other.metrics()

    late = {
        job_id: round(answered[job_id] - sent, 2)
        for job_id, sent in published.items()
        if answered[job_id] - sent > TIMEOUT_MS / 1000
    }
    counts = Counter(str(r["job_id"]) for r in jobs.results)
    statuses = Counter(r["status"] for r in jobs.results if str(r["job_id"]).startswith("part-"))
    noticed = not_ready_at[0] - stalled_at if not_ready_at else float("inf")
    print(
        f"\npartition: not ready after {noticed:.1f} s; slowest answer "
        f"{max(answered[j] - s for j, s in published.items()):.1f} s; statuses {dict(statuses)}; "
        f"silent links closed {metric(after_a, 'sfworker_amqp_silent_links_total'):.0f}"
    )
    assert not late, f"{len(late)} jobs answered after their deadline: {list(late.items())[:5]}"
    assert statuses == {"no_data": JOBS}  # none answered TIMEOUT: all ran in time
    assert not [j for j, n in counts.items() if n > 1], "jobs answered twice"
    assert noticed < 2 * AMQP_HEARTBEAT_SECONDS + 3  # /readyz said not ready
    assert metric(after_a, "sfworker_amqp_silent_links_total") >= 1
    # Each job's result was confirmed by the broker once in all: the cut-off worker's results
    # written into the dead link never arrived.
    confirmed = _published(after_a) + _published(after_b)
    assert confirmed == JOBS + len(probes)
    assert _published(after_a) > before  # it works again


@pytest.fixture
async def salesforce_proxy(simulator: SimulatorClient) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(simulator.base_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 80)
    await proxy.start()
    yield proxy
    await proxy.cut()


@pytest.mark.timeout(90)
async def test_a_stalled_salesforce_connection_times_out_and_is_not_reused(
    amqp_url: str,
    names: dict[str, str],
    tmp_path: Path,
    settings: Settings,
    jobs: JobClient,
    simulator: SimulatorClient,
    salesforce_proxy: TcpProxy,
) -> None:
    """Issue 19, point 2: the keep-alive connection a job's call goes out on hangs (nothing
    comes back, nothing is refused). That job is answered TIMEOUT within its deadline; the calls
    of the same account after it go out on other connections, answered at once, and none of
    them is ever given the hung one again."""
    accounts = write_accounts(
        tmp_path / "proxied.toml", f"http://127.0.0.1:{salesforce_proxy.port}"
    )
    worker = Worker(make_settings(amqp_url, names, accounts, coalesce_wait_ms=0))
    await worker.start()
    # The start-up /limits read (its token, then the call) done first: a job overlapping it
    # would open a second pooled connection, and the one the stall hangs must be the only one.
    await worker.fleet.reserve.primed()
    try:
        search = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}
        warm = await jobs.call({**search, "job_id": "warm", "timeout_ms": 5000})
        assert warm["status"] == "no_data"  # token and one pooled connection through the proxy
        assert salesforce_proxy.open_connections == 1
        salesforce_proxy.stall(new_connections=False)

        sent = time.monotonic()
        hung = await jobs.publish({**search, "job_id": "hung", "timeout_ms": 3000})
        await asyncio.sleep(0.3)  # the hung call holds the pooled connection; the next calls:
        following = [
            await jobs.publish({**search, "job_id": f"next-{i}", "timeout_ms": 3000})
            for i in range(5)
        ]
        answers = [await jobs.result(cid, wait=10) for cid in following]
        first_answers_at = time.monotonic()
        timed_out = await jobs.result(hung, wait=10)
        hung_answered = time.monotonic() - sent
        # After the timeout: more calls, the pool is never given the hung connection again.
        later = [
            await jobs.call({**search, "job_id": f"later-{i}", "timeout_ms": 3000}, wait=10)
            for i in range(10)
        ]
    finally:
        await worker.stop()
    assert [a["status"] for a in answers] == ["no_data"] * 5
    assert first_answers_at - sent < 3  # they did not wait for the hung call's deadline
    assert timed_out["status"] == "failed"
    assert timed_out["error"]["code"] == "TIMEOUT"
    assert hung_answered < 3 + 1  # within its deadline (and the reply's way back)
    assert [a["status"] for a in later] == ["no_data"] * 10
