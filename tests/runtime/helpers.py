"""What the runtime tests share: a worker's metrics read as a scraper would, and
`python -m worker` run as a command."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tests.support import ROOT
from tests.support.metrics import metric
from worker.app import Worker


def sample(worker: Worker, name: str, **labels: str) -> float:
    """`name{labels}` in the worker's metrics, read as a scraper would (tests.metrics)."""
    return metric(worker.metrics, name, **labels)


async def sfworker(
    *args: str, env: dict[str, str], limit: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m worker ARGS` in a subprocess; its output captured as text."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit,
    )
