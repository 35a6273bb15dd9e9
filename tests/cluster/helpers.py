"""What the cluster tests share: a private three-node RabbitMQ cluster (scripts/rabbit-cluster)
on free ports, a steady job stream, answers bookkeeping."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import ROOT
from tests.support.job_client import JobClient


@dataclass
class Stream:
    """Publishes jobs at a steady pace, retrying a publish the broker did not confirm (the
    runtime does the same: a job may then be queued twice, and is answered twice)."""

    client: JobClient
    pace: float
    published: list[dict[str, Any]] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    publish_retries: int = 0

    async def run(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            while True:
                try:
                    async with asyncio.timeout(10):
                        await self.client.publish(job)
                    break
                except Exception:  # not confirmed: timeout, nack, channel lost with its node
                    self.publish_retries += 1
                    await asyncio.sleep(0.2)
            self.published.append(job)
            self.sent_at[str(job["job_id"])] = time.monotonic()
            await asyncio.sleep(self.pace)

    def answered(self) -> Counter[str]:
        return Counter(str(r["job_id"]) for r in self.client.results)

    def all_answered(self) -> bool:
        answered = self.answered()
        return all(str(j["job_id"]) in answered for j in self.published)


def differing_duplicates(results: list[dict[str, Any]]) -> list[str]:
    """Job ids answered more than once with results that are not identical."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_id.setdefault(str(result["job_id"]), []).append(result)
    return sorted(job_id for job_id, seen in by_id.items() if any(r != seen[0] for r in seen))


SCRIPT = ROOT / "scripts" / "rabbit-cluster"


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base_port() -> int:
    """A base port whose AMQP (base..base+2), epmd (base+3), spare (base+4: a TLS listener of
    a test's own) and distribution (base+20000..) ports are free."""
    for _ in range(200):
        base = random.randrange(12000, 19000, 10)
        if _ports_free(
            [base, base + 1, base + 2, base + 3, base + 4, base + 20000, base + 20001, base + 20002]
        ):
            return base
    raise RuntimeError("no free ports for the test cluster")


class Cluster:
    """Three RabbitMQ nodes, 1..3, driven through scripts/rabbit-cluster; or, with `nodes=1`, a
    single broker, with `conf` (lines added to its rabbitmq.conf) and `plugins` of its own."""

    def __init__(
        self,
        base: int,
        directory: Path,
        *,
        nodes: int = 3,
        conf: Path | None = None,
        plugins: tuple[str, ...] = (),
    ) -> None:
        self.base = base
        self.directory = directory
        self.nodes = nodes
        self.env = {
            **os.environ,
            "RABBIT_CLUSTER_PORT": str(base),
            "RABBIT_CLUSTER_DIR": str(directory),
            "RABBIT_CLUSTER_NODES": str(nodes),
        }
        if conf is not None:
            self.env["RABBIT_CLUSTER_CONF"] = str(conf)
        if plugins:
            self.env["RABBIT_CLUSTER_PLUGINS"] = ",".join(plugins)

    def url(self, node: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.base + node - 1}/"

    def urls(self, first: int = 1) -> str:
        """SFWORKER_AMQP_URL listing every node, starting with `first`."""
        everyone = range(1, self.nodes + 1)
        order = [first, *(n for n in everyone if n != first)]
        return ",".join(self.url(n) for n in order)

    def run(self, *args: str, limit: float = 300, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=limit,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbit-cluster {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def ctl(self, *args: str, stdin: str | None = None) -> str:
        """`rabbitmqctl ARGS` against node 1 (tests.support.broker_users takes it)."""
        return self.run("ctl", "1", *args, limit=60, stdin=stdin)

    async def arun(self, *args: str, limit: float = 300) -> str:
        return await asyncio.to_thread(self.run, *args, limit=limit)

    async def kill(self, node: int) -> None:
        await self.arun("kill", str(node), limit=60)

    async def start(self, node: int) -> None:
        await self.arun("start", str(node))

    async def leader(self, queue: str) -> int:
        return int(await self.arun("leader", queue, limit=60))

    async def members(self, queue: str) -> list[int]:
        return [int(n) for n in (await self.arun("members", queue, limit=60)).split()]

    async def messages(self, queue: str) -> int:
        """Messages in a quorum queue, ready and unacknowledged."""
        return int(await self.arun("info", queue, "messages", limit=60))
