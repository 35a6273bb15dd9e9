"""bench/wait-replica: what `WAIT 1` costs a job. One primary and one replica (redis-server on
free loopback ports), the simulator (0 ms), and `sfworker run` against the primary, once with
SFWORKER_REDIS_WAIT_REPLICAS=1 and once with 0, alternated in the same run; each drains the same
number of jobs (inserts and searches: every job binds its job id, every insert writes its
marker: the writes that wait). Per run: jobs/s (first publish to last answer) and the worker's
CPU seconds per 1,000 jobs; medians over the repetitions.

    bench/wait-replica                     # 3 repetitions of 3,000 jobs each way
    bench/wait-replica --jobs 500 --repeat 1

Everything on 127.0.0.1 (the broker: --amqp-url); queues of the run's own, deleted at the end.
Not part of the test suite."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage
from sfsim import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from sfsim.testing import SimulatorClient

from bench.e2e.procs import Child, kill_all, start_simulator
from bench.e2e.systems import free_port

KEY = "b1:c2Z3b3JrZXItdGVzdHMtcmVkaXMta2V5LTMyYnl0ZXM="  # a bench key, never a real one


def job(run: str, index: int) -> dict[str, Any]:
    base = {"v": 1, "job_id": f"wait-{run}-{index}", "timeout_ms": 60000}
    if index % 2 == 0:
        fields = {"Subject": f"wait {run} {index}"}
        return {**base, "operation": "insert", "object": "Case", "fields": fields}
    return {**base, "operation": "search", "soql": "SELECT Id FROM Account WHERE Name = 'Acme'"}


async def _ready(port: int, worker: Child) -> None:
    async with aiohttp.ClientSession() as http:
        give_up = time.monotonic() + 60
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > give_up or not worker.alive():
                raise RuntimeError(f"the worker did not get ready:\n{worker.tail()}")
            await asyncio.sleep(0.2)


async def one_run(
    args: argparse.Namespace, sim_url: str, redis_url: str, wait: int, workdir: Path
) -> tuple[float, float]:
    """jobs/s and worker CPU s per 1,000 jobs of one drain with SFWORKER_REDIS_WAIT_REPLICAS."""
    run = uuid.uuid4().hex[:8]
    queue = f"waitbench.{run}.blocks"
    accounts = workdir / f"wait-{run}.toml"
    accounts.write_text(
        "[accounts.bench]\n"
        f'instance_url = "{sim_url}"\n'
        'flow = "client_credentials"\n'
        f'client_id = "{DEFAULT_CLIENT_ID}"\n'
        f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
        "default = true\n"
    )
    port = free_port()
    env = {
        "SFWORKER_AMQP_URL": args.amqp_url,
        "SFWORKER_REDIS_URL": redis_url,
        "SFWORKER_REDIS_PREFIX": f"waitbench-{run}:",
        "SFWORKER_REDIS_ENCRYPTION_KEY": KEY,
        "SFWORKER_REDIS_WAIT_REPLICAS": str(wait),
        "SFWORKER_ACCOUNTS_FILE": str(accounts),
        "SFWORKER_HTTP_HOST": "127.0.0.1",
        "SFWORKER_HTTP_PORT": str(port),
        "SFWORKER_LOG_LEVEL": "WARNING",
        "SFWORKER_PREFETCH": str(args.prefetch),
        "SFWORKER_ALLOW_INSECURE_LOCALHOST": "true",
        "SFWORKER_REQUEST_EXCHANGE": queue,
        "SFWORKER_REQUEST_ROUTING_KEY": queue,
        "SFWORKER_REQUEST_QUEUE": queue,
        "SFWORKER_DEAD_LETTER_EXCHANGE": f"{queue}.dlx",
        "SFWORKER_DEAD_LETTER_QUEUE": f"{queue}.dead",
        "SFWORKER_RESULTS_EXCHANGE": f"{queue}.results",
    }
    worker = Child(f"wait-{wait}", [sys.executable, "-m", "worker", "run"], env)
    connection = await aio_pika.connect_robust(args.amqp_url)
    try:
        await _ready(port, worker)
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        waiting = {f"wait-{run}-{i}" for i in range(args.jobs)}
        statuses: dict[str, int] = {}
        done = asyncio.Event()

        async def on_reply(message: AbstractIncomingMessage) -> None:
            data = orjson.loads(message.body)
            waiting.discard(data["job_id"])
            statuses[data["status"]] = statuses.get(data["status"], 0) + 1
            if not waiting:
                done.set()

        await replies.consume(on_reply, no_ack=True)
        exchange = await channel.get_exchange(queue)
        bodies = [orjson.dumps(job(run, i)) for i in range(args.jobs)]
        cpu_before = worker.cpu_seconds()
        started = time.monotonic()
        for body in bodies:
            await exchange.publish(
                aio_pika.Message(body, content_type="application/json", reply_to=replies.name),
                routing_key=queue,
            )
        await asyncio.wait_for(done.wait(), 600)
        took = time.monotonic() - started
        cpu = worker.cpu_seconds() - cpu_before
        if statuses.get("ok", 0) != args.jobs:
            raise RuntimeError(f"not every job ok: {statuses}")
        for name in (queue, f"{queue}.dead"):
            await channel.queue_delete(name)
        for name in (queue, f"{queue}.dlx", f"{queue}.results"):
            await channel.exchange_delete(name)
        return args.jobs / took, cpu / args.jobs * 1000
    finally:
        await connection.close()
        worker.stop()
        with contextlib.suppress(OSError):
            accounts.unlink()


async def bench(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="wait-bench-"))
    primary_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    primary = Child(
        "redis-primary",
        ["redis-server", "--port", str(primary_port), "--dir", str(workdir), *common],
    )
    replica_dir = workdir / "replica"
    replica_dir.mkdir()
    replica = Child(
        "redis-replica",
        [
            "redis-server",
            "--port",
            str(replica_port),
            "--dir",
            str(replica_dir),
            "--replicaof",
            "127.0.0.1",
            str(primary_port),
            *common,
        ],
    )
    sim_child, sim_url = start_simulator()
    simulator = SimulatorClient(sim_url)
    redis_url = f"redis://127.0.0.1:{primary_port}/0"
    try:
        client = aioredis.from_url(redis_url)
        give_up = time.monotonic() + 30
        while True:
            with contextlib.suppress(Exception):
                info = await client.info("replication")
                if int(info.get("connected_slaves", 0)) >= 1:
                    break
            if time.monotonic() > give_up:
                raise RuntimeError("the replica did not connect")
            await asyncio.sleep(0.2)
        await client.aclose()
        await simulator.seed("Account", [{"Name": "Acme"}])
        results: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
        for repetition in range(args.repeat):
            order = (1, 0) if repetition % 2 == 0 else (0, 1)
            for wait in order:
                rate, cpu = await one_run(args, sim_url, redis_url, wait, workdir)
                results[wait].append((rate, cpu))
                print(
                    f"repetition {repetition + 1}, WAIT {wait}: {rate:,.0f} jobs/s, "
                    f"{cpu:.2f} CPU s / 1000 jobs",
                    flush=True,
                )
        print("\n| Redis writes | jobs/s | CPU s / 1000 jobs (worker) |")
        print("|---|---|---|")
        for wait, label in ((0, "no WAIT (0)"), (1, "WAIT 1, replica on loopback")):
            rate = statistics.median(r for r, _ in results[wait])
            cpu = statistics.median(c for _, c in results[wait])
            print(f"| {label} | {rate:,.0f} | {cpu:.2f} |")
    finally:
        await simulator.close()
        sim_child.stop()
        replica.stop()
        primary.stop()
        kill_all()
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/wait-replica", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per run (3000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each (3)")
    parser.add_argument("--prefetch", type=int, default=128)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args(argv)
    if "127.0.0.1" not in args.amqp_url and "localhost" not in args.amqp_url:
        parser.error("only a broker on 127.0.0.1")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
