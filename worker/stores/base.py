"""The interface every result store implements: in this process (memory.py) or for the fleet
(redis.py)."""

from __future__ import annotations

from typing import Protocol


class ResultStore(Protocol):
    """Results of recent jobs by job_id, so a redelivered job is answered, not run again; and
    the "insert sent" markers that keep an insert from being POSTed twice."""

    async def get(self, job_id: str) -> bytes | None: ...

    async def put(self, job_id: str, result: bytes) -> None: ...

    async def mark_insert_sent(self, job_id: str) -> None:
        """Written just before an insert's request leaves the process."""
        ...

    async def insert_sent(self, job_id: str) -> bool:
        """True when an earlier delivery of this insert may have reached Salesforce."""
        ...

    async def close(self) -> None: ...
