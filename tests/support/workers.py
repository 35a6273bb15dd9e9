"""`sfworker run` processes of a test, as Kubernetes would run them."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import ROOT
from tests.support.ports import free_port
from tests.support.settings import settings_env
from worker.settings import Settings


class WorkerProcess:
    """`python -m worker run` in a subprocess, as Kubernetes would run it."""

    def __init__(self, settings: Settings, log_path: Path, **overrides: Any) -> None:
        self.port = free_port()
        env = settings_env(settings)
        env["SFWORKER_HTTP_PORT"] = str(self.port)
        env["SFWORKER_HTTP_HOST"] = "127.0.0.1"
        for key, value in overrides.items():
            env[f"SFWORKER_{key.upper()}"] = str(value)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, within: float = 20.0) -> None:
        async with asyncio.timeout(within), aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited {self.proc.returncode}: {self.logs()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as response:
            return await response.text()

    async def wait_exit(self, within: float) -> int:
        async with asyncio.timeout(within):
            while self.proc.poll() is None:
                await asyncio.sleep(0.05)
        return self.proc.returncode

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def spawning(log_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """A function that starts `sfworker run` processes (logs in `log_dir`); every one of them
    is stopped on exit."""
    started: list[WorkerProcess] = []

    def spawn(settings: Settings, **overrides: Any) -> WorkerProcess:
        worker = WorkerProcess(settings, log_dir / f"worker-{len(started)}.log", **overrides)
        started.append(worker)
        return worker

    try:
        yield spawn
    finally:
        for worker in started:
            worker.stop()
