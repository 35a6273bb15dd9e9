"""The systems under test, each a set of processes consuming one queue of search jobs:
sfworker (1..N processes, Redis on or off), the minimal baseline, Celery + simple-salesforce,
aio-pika + aiosalesforce. Each says how a job is encoded and what a right answer looks like."""

from __future__ import annotations

import base64
import os
import socket
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from sfsim.testing import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

from bench.e2e.broker import Broker, Checker, Encoder
from bench.e2e.procs import Child, cpu_seconds, peak_rss_mb

PREFETCH = 32  # sfworker's default prefetch; the baseline and the peers get the same


@dataclass(frozen=True)
class Workload:
    """What every job asks: one SOQL search, and how many records the right answer has."""

    soql: str
    expected: int
    max_records: int = 200

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = {"v": 1, "job_id": job_id, "operation": "search", "soql": self.soql}
        if self.max_records != 200:
            job["max_records"] = self.max_records
        return job


@dataclass
class Context:
    amqp_url: str
    sim_url: str
    workdir: Path
    run_id: str
    redis_url: str
    # The fleet's Redis key (sealing); a fresh one for each run.
    redis_key: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())


def fetch_token(sim_url: str) -> str:
    """A client_credentials access token by a plain POST (the baseline's fixed token)."""
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the loopback simulator only
        f"{sim_url}/services/oauth2/token", data=form, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return str(orjson.loads(response.read())["access_token"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _contract_check(workload: Workload) -> Checker:
    def check(body: bytes) -> bool:
        data = orjson.loads(body)
        records = data.get("records") or []
        return bool(data.get("status") == "ok" and len(records) == workload.expected)

    return check


def job_encoder(workload: Workload, account: str | None = None) -> Encoder:
    """Each job as the contract's message (JSON, persistent), naming `account` when given."""

    def encode(job_id: str, reply_to: str) -> aio_pika.Message:
        job = workload.job(job_id)
        if account is not None:
            job = {**job, "account": account}
        return aio_pika.Message(
            orjson.dumps(job),
            content_type="application/json",
            correlation_id=job_id,
            message_id=job_id,
            reply_to=reply_to,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    return encode


class System:
    """Processes started on `start`, stopped on `stop`; CPU and peak RSS summed over them."""

    label = ""
    consumers = 1

    def __init__(self, ctx: Context, tag: str) -> None:
        self.ctx = ctx
        self.queue = f"sfworker-bench-{ctx.run_id}-{tag}"
        self.children: list[Child] = []
        self._exit_codes: list[int | None] = []

    async def prepare(self, broker: Broker) -> None:
        await broker.declare_quorum(self.queue)

    def start(self) -> None:
        raise NotImplementedError

    def encode(self, workload: Workload) -> Encoder:
        return job_encoder(workload)

    def check(self, workload: Workload) -> Checker:
        return _contract_check(workload)

    def cpu(self) -> float:
        return sum(cpu_seconds(c.pid) for c in self.children)

    def rss_mb(self) -> float:
        return sum(peak_rss_mb(c.pid) for c in self.children)

    def alive(self) -> bool:
        return all(c.alive() for c in self.children)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} ({c.log_path})\n{c.tail()}" for c in self.children)

    def stop(self) -> list[int | None]:
        codes = [child.stop() for child in self.children]
        self.children = []
        return codes

    async def cleanup(self, broker: Broker) -> None:
        await broker.delete([self.queue])


class Baseline(System):
    label = "baseline (aio-pika + aiohttp)"

    def __init__(self, ctx: Context, tag: str = "baseline") -> None:
        super().__init__(ctx, tag)

    def start(self) -> None:
        env = {
            "BENCH_AMQP_URL": self.ctx.amqp_url,
            "BENCH_QUEUE": self.queue,
            "BENCH_PREFETCH": str(PREFETCH),
            "BENCH_SIM_URL": self.ctx.sim_url,
            # Fetched now: an earlier token storm expired every session.
            "BENCH_TOKEN": fetch_token(self.ctx.sim_url),
        }
        argv = [sys.executable, "-m", "bench.e2e.consumers", "baseline"]
        self.children.append(Child("baseline", argv, env))


class AioSalesforce(System):
    label = "aio-pika + aiosalesforce"

    def __init__(self, ctx: Context, tag: str = "aiosf") -> None:
        super().__init__(ctx, tag)

    def start(self) -> None:
        env = {
            "BENCH_AMQP_URL": self.ctx.amqp_url,
            "BENCH_QUEUE": self.queue,
            "BENCH_PREFETCH": str(PREFETCH),
            "BENCH_SIM_URL": self.ctx.sim_url,
            "BENCH_CLIENT_ID": DEFAULT_CLIENT_ID,
            "BENCH_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        }
        argv = [sys.executable, "-m", "bench.e2e.consumers", "aiosalesforce"]
        self.children.append(Child("aiosalesforce", argv, env))


class CelerySimpleSalesforce(System):
    label = "Celery + simple-salesforce"

    def __init__(self, ctx: Context, tag: str = "celery") -> None:
        super().__init__(ctx, tag)

    def start(self) -> None:
        env = {
            "BENCH_AMQP_URL": self.ctx.amqp_url,
            "BENCH_QUEUE": self.queue,
            "BENCH_SIM_URL": self.ctx.sim_url,
            "BENCH_CLIENT_ID": DEFAULT_CLIENT_ID,
            "BENCH_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
            "BENCH_CONCURRENCY": str(PREFETCH),
        }
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.e2e.celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(PREFETCH),
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            self.queue,
            "-n",
            f"{self.queue}@bench",
        ]
        self.children.append(Child("celery", argv, env))

    def encode(self, workload: Workload) -> Encoder:
        """A Celery task message (protocol 2), as `send_task("bench.search", [job])` makes."""

        def encode(job_id: str, reply_to: str) -> aio_pika.Message:
            body = [[workload.job(job_id)], {}, {"callbacks": None, "errbacks": None}]
            body[2].update({"chain": None, "chord": None})
            headers: dict[str, Any] = {
                "lang": "py",
                "task": "bench.search",
                "id": job_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": job_id,
                "parent_id": None,
                "argsrepr": "",
                "kwargsrepr": "",
                "origin": "sfworker-bench",
                "ignore_result": False,
            }
            return aio_pika.Message(
                orjson.dumps(body),
                headers=headers,
                content_type="application/json",
                content_encoding="utf-8",
                correlation_id=job_id,
                reply_to=reply_to,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=0,
            )

        return encode

    def check(self, workload: Workload) -> Checker:
        def check(body: bytes) -> bool:
            data = orjson.loads(body)
            result = data.get("result") or {}
            return bool(
                data.get("status") == "SUCCESS"
                and len(result.get("records") or []) == workload.expected
            )

        return check

    async def cleanup(self, broker: Broker) -> None:
        await broker.delete([self.queue], [self.queue])


@dataclass
class SfworkerOptions:
    processes: int = 1
    redis: bool = False
    env: dict[str, str] = field(default_factory=dict)  # extra SFWORKER_* settings
    max_concurrency: int | None = None  # the account's cap; None = the default
    label: str | None = None  # the row's name, when the settings differ from the defaults


class Sfworker(System):
    """`sfworker run` at its default settings: only the URLs, the accounts file, an HTTP port
    of its own (the default 8080 would collide) and topology names of its own are given."""

    def __init__(self, ctx: Context, tag: str, options: SfworkerOptions | None = None) -> None:
        super().__init__(ctx, tag)
        self.options = options or SfworkerOptions()
        self.consumers = self.options.processes
        self.label = self.options.label or "sfworker" + (
            f" x{self.options.processes}" if self.options.processes > 1 else ""
        )
        self.prefix = f"sfworker-bench-{ctx.run_id}-{tag}:"
        names = {
            "REQUEST_EXCHANGE": self.queue,
            "REQUEST_ROUTING_KEY": self.queue,
            "REQUEST_QUEUE": self.queue,
            "DEAD_LETTER_EXCHANGE": f"{self.queue}.dlx",
            "DEAD_LETTER_QUEUE": f"{self.queue}.dead",
            "RESULTS_EXCHANGE": f"{self.queue}.results",
        }
        self.names = names
        self.accounts = ctx.workdir / f"accounts-{tag}.toml"
        cap = self.options.max_concurrency
        self.accounts.write_text(
            "[accounts.bench]\n"
            f'instance_url = "{ctx.sim_url}"\n'
            'flow = "client_credentials"\n'
            f'client_id = "{DEFAULT_CLIENT_ID}"\n'
            f'client_secret = "{DEFAULT_CLIENT_SECRET}"\n'
            "default = true\n" + (f"max_concurrency = {cap}\n" if cap else "")
        )

    def settings_env(self) -> dict[str, str]:
        env = {
            "SFWORKER_AMQP_URL": self.ctx.amqp_url,
            "SFWORKER_ACCOUNTS_FILE": str(self.accounts),
            "SFWORKER_HTTP_HOST": "127.0.0.1",
            **{f"SFWORKER_{k}": v for k, v in self.names.items()},
            **self.options.env,
        }
        if self.options.redis:
            env["SFWORKER_REDIS_URL"] = self.ctx.redis_url
            env["SFWORKER_REDIS_PREFIX"] = self.prefix
            # Sealed, as a production fleet runs (the cost is in the "sealing" table).
            env["SFWORKER_REDIS_ENCRYPTION_KEY"] = self.ctx.redis_key
        return env

    async def prepare(self, broker: Broker) -> None:
        """Declare the worker's own topology first, so jobs can wait in its queue."""
        from worker.runtime import topology
        from worker.settings import Settings

        settings = Settings(
            amqp_url=self.ctx.amqp_url, **{k.lower(): v for k, v in self.names.items()}
        )
        assert broker.confirm is not None
        await topology.declare(broker.confirm, settings)
        broker.queues.update({self.queue, self.names["DEAD_LETTER_QUEUE"]})
        broker.exchanges.update(
            {self.queue, self.names["DEAD_LETTER_EXCHANGE"], self.names["RESULTS_EXCHANGE"]}
        )

    def start(self) -> None:
        for i in range(self.options.processes):
            env = {**self.settings_env(), "SFWORKER_HTTP_PORT": str(free_port())}
            argv = [sys.executable, "-m", "worker", "run"]
            self.children.append(Child(f"sfworker-{i + 1}", argv, env))

    async def cleanup(self, broker: Broker) -> None:
        await broker.delete(
            [self.queue, self.names["DEAD_LETTER_QUEUE"]],
            [self.queue, self.names["DEAD_LETTER_EXCHANGE"], self.names["RESULTS_EXCHANGE"]],
        )
        if self.options.redis:
            clear_redis(self.ctx.redis_url, self.prefix)


def clear_redis(url: str, prefix: str) -> int:
    """Delete the keys under `prefix` (the worker's, for this run only)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()
