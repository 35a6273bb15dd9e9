"""A replicated Redis of a test's own: one primary, one replica and three sentinels
(`redis-server <config> --sentinel`, from configs generated in the test's directory), on free
ports, to fail over by SIGKILL or by `SENTINEL FAILOVER` (never the shared Redis)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

MASTER = "sfworker"
DOWN_AFTER_MS = 1000  # a primary silent this long is down for a sentinel
FAILOVER_TIMEOUT_MS = 10_000


class Sentinel:
    def __init__(self, workdir: Path, primary_port: int, failover_timeout_ms: int) -> None:
        self.port = 0
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.primary_port = primary_port
        self.failover_timeout_ms = failover_timeout_ms
        self.config = workdir / "sentinel.conf"
        self.log = workdir / "sentinel.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """On a free port (again: another process may have taken the one picked before)."""
        self.port = free_port()
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", str(self.config), "--sentinel"], stdout=log, stderr=log
            )

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class SentinelCluster:
    """`start()`, then `sentinels` (SFWORKER_REDIS_SENTINELS), `primary_port()`,
    `kill_primary()`, `failover()`, `wait_new_primary(old)`; `stop()` kills everything."""

    def __init__(self, workdir: Path, failover_timeout_ms: int = FAILOVER_TIMEOUT_MS) -> None:
        self.primary = RedisServer(_dir(workdir / "primary"))
        self.replica = RedisServer(
            _dir(workdir / "replica"), "--replicaof", "127.0.0.1", str(self.primary.port)
        )
        self.nodes = {self.primary.port: self.primary, self.replica.port: self.replica}
        self.guards = [
            Sentinel(workdir / f"sentinel-{i}", self.primary.port, failover_timeout_ms)
            for i in range(3)
        ]

    def replicate_through(self, port: int) -> None:
        """Before `start`: the replica reaches the primary at `port` (a proxy the test can
        stall: a replica that lags). Sentinel leaves such a replica alone for
        `failover_timeout_ms` before it points it at the primary itself."""
        at = self.replica.args.index("--replicaof")
        self.replica.args[at + 2] = str(port)

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.guards)

    async def start(self) -> None:
        await self.primary.start()
        await self.replica.start()
        await self.wait_replicated(self.primary.port, 1)
        for guard in self.guards:
            guard.launch()

        async def all_known() -> bool:
            for guard in self.guards:
                if guard.proc is not None and guard.proc.poll() is not None:
                    guard.launch()  # its port was taken meanwhile
                    return False
                client = guard.client()
                try:
                    replicas = await client.execute_command("SENTINEL", "REPLICAS", MASTER)
                    peers = await client.execute_command("SENTINEL", "SENTINELS", MASTER)
                except Exception:
                    return False
                finally:
                    await client.aclose()
                if len(replicas) < 1 or len(peers) < 2:
                    return False
            return True

        await wait_until(all_known, 30, "sentinels that know the replica and each other")

    async def wait_replicated(self, port: int, replicas: int, within: float = 30) -> None:
        """The primary on `port` has `replicas` replicas online."""

        async def online() -> bool:
            client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            try:
                info = await client.info("replication")
            except Exception:
                return False
            finally:
                await client.aclose()
            up = [k for k, v in info.items() if k.startswith("slave") and "online" in str(v)]
            return info.get("role") == "master" and len(up) >= replicas

        await wait_until(online, within, f"{replicas} replica(s) online at port {port}")

    async def primary_port(self) -> int:
        """The primary's port as the sentinels name it (the first that answers)."""
        for guard in self.guards:
            client = guard.client()
            try:
                host_port = await client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                )
                return int(host_port[1])
            except Exception:  # noqa: S112 - a sentinel down: the next one is asked
                continue
            finally:
                await client.aclose()
        raise AssertionError("no sentinel answers")

    async def wait_new_primary(self, old: int, within: float = 30) -> int:
        """Every sentinel names a primary other than `old`; its port."""

        async def moved() -> bool:
            ports = set()
            for guard in self.guards:
                client = guard.client()
                try:
                    host_port = await client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                    )
                    ports.add(int(host_port[1]))
                except Exception:
                    return False
                finally:
                    await client.aclose()
            return len(ports) == 1 and old not in ports

        await wait_until(moved, within, "a new primary named by every sentinel")
        return await self.primary_port()

    async def kill_primary(self) -> int:
        """SIGKILL the primary; its port."""
        port = await self.primary_port()
        self.nodes[port].kill()
        return port

    async def failover(self) -> None:
        """`SENTINEL FAILOVER`: the replica is promoted, the primary demoted, both alive."""
        client = self.guards[0].client()
        try:
            await client.execute_command("SENTINEL", "FAILOVER", MASTER)
        finally:
            await client.aclose()

    def url_of(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        for guard in self.guards:
            guard.kill()
        for node in self.nodes.values():
            node.kill()


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
