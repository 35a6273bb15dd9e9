"""A job's end-to-end latency, and the p99 the fairness tests hold latencies to."""

from __future__ import annotations

import math
import time
from typing import Any

from tests.support.job_client import JobClient


async def timed(
    client: JobClient, job: dict[str, Any], wait: float
) -> tuple[float, dict[str, Any]]:
    """Publish `job` and wait up to `wait` s for its result: (seconds it took, the result)."""
    started = time.monotonic()
    result = await client.call(job, wait=wait)
    return time.monotonic() - started, result


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ranked = sorted(values)
    return ranked[math.ceil(0.99 * len(ranked)) - 1]
