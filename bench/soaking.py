"""bench/soak: what hours do to one worker. A steady mixed load (searches, inserts, updates) at a
fixed rate against `sfworker run` (with Redis) and the simulator, an expiry of every Salesforce
session every few minutes and an occasional fault; every minute one line with the worker's RSS,
open file descriptors, asyncio tasks and Redis keys, and at the end the slope of each over the
second half (least squares, per hour) beside the answers counted by status.

    bench/soak                        # one hour at 150 jobs/s
    bench/soak --minutes 10 --rate 50
    bench/soak --help

Everything on 127.0.0.1; the worker's keys live under a prefix of the run's own and are deleted
at the end, as are its queues. Not part of the test suite (CI does not run it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage
from redis.exceptions import RedisError
from sfsim import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sfsim.testing import SimulatorClient

from bench.e2e.procs import Child, kill_all, start_simulator
from bench.e2e.systems import free_port

ROOT = Path(__file__).resolve().parents[1]
SERIES = ("rss_mb", "fds", "tasks", "redis_keys")


@dataclass
class Sample:
    minute: float
    rss_mb: float
    fds: float
    tasks: float
    redis_keys: float
    answered: int
    late: int


@dataclass
class Load:
    """What was sent and what came back."""

    sent: dict[str, float] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    late: int = 0  # answered after the job's deadline
    not_sent: int = 0  # publishes the broker refused (it was restarting)
    latencies: list[float] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 60


async def tasks_of(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url) as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("sfworker_asyncio_tasks "):
            return float(line.split()[1])
    return float("nan")


async def count_keys(client: aioredis.Redis, prefix: str) -> int:
    return sum([1 async for _ in client.scan_iter(match=f"{prefix}*", count=1000)])


def job(kind: str, index: int, record_ids: list[str], timeout_ms: int) -> dict[str, Any]:
    base: dict[str, Any] = {"v": 1, "job_id": f"soak-{index}", "timeout_ms": timeout_ms}
    if kind == "search":
        return {
            **base,
            "operation": "search",
            "soql": "SELECT Id, Name FROM Account WHERE Name = :n",
            "params": {"n": "Acme"},
        }
    if kind == "insert":
        return {
            **base,
            "operation": "insert",
            "object": "Case",
            "fields": {"Subject": f"soak {index}"},
        }
    return {
        **base,
        "operation": "update",
        "object": "Case",
        "id": record_ids[index % len(record_ids)],
        "fields": {"Description": f"soak {index}"},
    }


async def soak(args: argparse.Namespace) -> int:
    run = uuid.uuid4().hex[:8]
    queue = f"soak.{run}.blocks"
    prefix = f"sfworker-soak-{run}:"
    workdir = Path(args.workdir)
    sim_child, sim_url = start_simulator()
    simulator = SimulatorClient(sim_url)
    await simulator.seed("Account", [{"Name": "Acme"} for _ in range(3)])
    record_ids = await simulator.seed("Case", [{"Subject": f"seed {i}"} for i in range(500)])
    await simulator.set_latency(args.latency_ms, jitter_ms=args.latency_ms // 2)
    accounts = workdir / f"soak-{run}-accounts.toml"
    accounts.write_text(
        "[accounts.soak]\n"
        f'instance_url = "{sim_url}"\n'
        'flow = "client_credentials"\n'
        f'client_id = "{DEFAULT_CLIENT_ID}"\n'
        f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
        "default = true\n"
    )
    http_port = free_port()
    env = {
        "SFWORKER_AMQP_URL": args.amqp_url,
        "SFWORKER_REDIS_URL": args.redis_url,
        "SFWORKER_REDIS_PREFIX": prefix,
        "SFWORKER_ACCOUNTS_FILE": str(accounts),
        "SFWORKER_HTTP_HOST": "127.0.0.1",
        "SFWORKER_HTTP_PORT": str(http_port),
        "SFWORKER_LOG_LEVEL": "WARNING",
        "SFWORKER_REQUEST_EXCHANGE": queue,
        "SFWORKER_REQUEST_ROUTING_KEY": queue,
        "SFWORKER_REQUEST_QUEUE": queue,
        "SFWORKER_DEAD_LETTER_EXCHANGE": f"{queue}.dlx",
        "SFWORKER_DEAD_LETTER_QUEUE": f"{queue}.dead",
        "SFWORKER_RESULTS_EXCHANGE": f"{queue}.results",
    }
    worker = Child("sfworker-soak", [sys.executable, "-m", "worker", "run"], env)
    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
    redis = aioredis.from_url(args.redis_url)
    connection = await aio_pika.connect_robust(args.amqp_url)
    load = Load()
    samples: list[Sample] = []
    try:
        async with aiohttp.ClientSession() as http:
            give_up = time.monotonic() + 60
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{http_port}/readyz") as response:
                        if response.status == 200:
                            break
                if time.monotonic() > give_up or not worker.alive():
                    raise RuntimeError(f"the worker did not get ready:\n{worker.tail()}")
                await asyncio.sleep(0.2)
            channel = await connection.channel()
            replies = await channel.declare_queue(exclusive=True, auto_delete=True)

            async def on_reply(message: AbstractIncomingMessage) -> None:
                data = orjson.loads(message.body)
                sent = load.sent.pop(str(message.correlation_id), None)
                load.answered += 1
                code = (data.get("error") or {}).get("code")
                load.statuses[data["status"] + (f"/{code}" if code else "")] += 1
                if not load.sent:
                    load.drained.set()
                if sent is not None:
                    took = time.monotonic() - sent
                    load.latencies.append(took)
                    if took > args.timeout_ms / 1000:
                        load.late += 1

            await replies.consume(on_reply, no_ack=True)
            exchange = await channel.get_exchange(queue)
            print(
                f"soak: {args.minutes:g} min at {args.rate:g} jobs/s (search/insert/update "
                f"{args.mix}), worker pid {worker.pid}, simulator {sim_url}, Redis prefix "
                f"{prefix}",
                flush=True,
            )
            print("minute  rss_mb  fds  tasks  redis_keys  answered  late", flush=True)
            start = time.monotonic()
            end = start + args.minutes * 60
            rng = random.Random(args.seed)
            weights = [float(w) for w in args.mix.split("/")]

            async def publish() -> None:
                index = 0
                while time.monotonic() < end:
                    await asyncio.sleep(max(0.0, start + index / args.rate - time.monotonic()))
                    kind = rng.choices(("search", "insert", "update"), weights)[0]
                    body = job(kind, index, record_ids, args.timeout_ms)
                    job_id = body["job_id"]
                    load.sent[job_id] = time.monotonic()
                    index += 1
                    try:
                        await exchange.publish(
                            aio_pika.Message(
                                orjson.dumps(body),
                                content_type="application/json",
                                correlation_id=job_id,
                                message_id=job_id,
                                reply_to=replies.name,
                                timestamp=time.time(),
                            ),
                            routing_key=queue,
                        )
                    except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
                        # The shared broker restarted (another user's test): this job is not
                        # sent; go on once the connection is back.
                        load.sent.pop(job_id, None)
                        load.not_sent += 1
                        await asyncio.sleep(1)

            async def disturb() -> None:
                """A session expiry every `--expiry-minutes`, a fault now and then."""
                next_expiry = start + args.expiry_minutes * 60
                while time.monotonic() < end:
                    await asyncio.sleep(rng.uniform(10, 50))
                    if time.monotonic() >= next_expiry:
                        await simulator.expire_sessions()
                        next_expiry += args.expiry_minutes * 60
                    fault = rng.choice(("503", "lock", "slow"))
                    if fault == "503":
                        await simulator.add_fault(status=503, count=rng.randint(1, 5))
                    elif fault == "lock":
                        await simulator.add_fault(status=400, count=rng.randint(1, 3))
                    else:
                        await simulator.add_fault(action="delay", delay_ms=1500, count=3)

            async def sample() -> None:
                for minute in range(1, int(args.minutes) + 1):
                    await asyncio.sleep(max(0.0, start + minute * 60 - time.monotonic()))
                    tasks = keys = float("nan")
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        tasks = await tasks_of(http, metrics_url)
                    with contextlib.suppress(RedisError, OSError):
                        keys = await count_keys(redis, prefix)
                    s = Sample(
                        minute,
                        rss_mb(worker.pid),
                        open_fds(worker.pid),
                        tasks,
                        keys,
                        load.answered,
                        load.late,
                    )
                    samples.append(s)
                    print(
                        f"{s.minute:6.0f}  {s.rss_mb:6.1f}  {s.fds:3.0f}  {s.tasks:5.0f}  "
                        f"{s.redis_keys:10.0f}  {s.answered:8d}  {s.late:4d}",
                        flush=True,
                    )
                    if not worker.alive():
                        raise RuntimeError(f"the worker died:\n{worker.tail()}")

            await asyncio.gather(publish(), disturb(), sample())
            if load.sent:
                load.drained.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(load.drained.wait(), 30)
    finally:
        with contextlib.suppress(Exception):
            channel = await connection.channel()
            for name in (queue, f"{queue}.dead"):
                await channel.queue_delete(name)
            for name in (queue, f"{queue}.dlx", f"{queue}.results"):
                await channel.exchange_delete(name)
        await connection.close()
        worker.stop()
        with contextlib.suppress(Exception):
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await redis.delete(*keys)
        await redis.aclose()
        await simulator.close()
        sim_child.stop()
        kill_all()
        with contextlib.suppress(OSError):
            accounts.unlink()

    half = [s for s in samples if s.minute > args.minutes / 2]
    slopes = {name: slope_per_hour([(s.minute, getattr(s, name)) for s in half]) for name in SERIES}
    latencies = sorted(load.latencies)
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    print(
        "slope over the second half, per hour: "
        + ", ".join(f"{name} {value:+.2f}" for name, value in slopes.items())
    )
    print(
        f"answers {load.answered} ({dict(load.statuses.most_common())}), unanswered "
        f"{len(load.sent)}, after the deadline {load.late}, not sent {load.not_sent}, "
        f"p99 {p99:.0f} ms"
    )
    if args.out:
        report = json.dumps(
            {
                "args": vars(args),
                "samples": [s.__dict__ for s in samples],
                "slopes_per_hour": slopes,
                "statuses": dict(load.statuses),
                "unanswered": len(load.sent),
                "late": load.late,
            },
            indent=1,
        )
        await asyncio.to_thread(Path(args.out).write_text, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--rate", type=float, default=150.0, help="jobs a second (150)")
    parser.add_argument("--mix", default="70/15/15", help="search/insert/update weights")
    parser.add_argument("--timeout-ms", type=int, default=8000, help="each job's deadline")
    parser.add_argument("--latency-ms", type=int, default=30, help="simulator latency")
    parser.add_argument("--expiry-minutes", type=float, default=4.0, help="session expiry")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--workdir", default=str(ROOT / ".bench-results"))
    parser.add_argument("--out", default="", help="write the samples as JSON here")
    args = parser.parse_args(argv)
    for url in (args.amqp_url, args.redis_url):
        if "127.0.0.1" not in url and "localhost" not in url:
            parser.error("only services on 127.0.0.1")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
