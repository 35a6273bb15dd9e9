"""A redis-server of a test's own on a free port, to kill and start again (tests must never stop
the shared one). `durable` keeps an append-only file synced at every write, as a fleet's Redis
would persist, so a restart, even after SIGKILL, keeps the results and insert markers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError

from tests.support.ports import free_port
from tests.support.waiting import wait_until


class RedisServer:
    def __init__(self, workdir: Path, *extra: str, durable: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else []
        self.args = [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *(persistence or ["--appendonly", "no"]),
            "--dir",
            str(workdir),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def launch(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def start(self) -> None:
        """Launch it and wait until it answers."""
        self.launch()
        client = aioredis.from_url(self.url)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except AuthenticationError:
                return True  # it answers: it wants a password
            except Exception:
                return False

        try:
            await wait_until(answers, 20, f"redis-server on port {self.port}")
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def keys(self, pattern: str) -> list[bytes]:
        client = aioredis.from_url(self.url)
        try:
            return [key async for key in client.scan_iter(match=pattern, count=500)]
        finally:
            await client.aclose()
