"""What the cluster tests share: a steady job stream, answers bookkeeping, metrics parsing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.job_client import JobClient
from tests.metrics import metric

__all__ = ["Stream", "differing_duplicates", "metric"]


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
