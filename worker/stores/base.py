"""The interface every result store implements: in this process (memory.py) or for the fleet
(redis.py)."""

from __future__ import annotations

from typing import Protocol


class ResultStore(Protocol):
    """Results of recent jobs by job_id, so a redelivered job is answered, not run again; and
    the "insert sent" markers that keep an insert from being POSTed twice."""

    async def get(self, job_id: str) -> bytes | None: ...

    async def put(self, job_id: str, result: bytes) -> None: ...

    async def mark_insert_sent(self, job_id: str) -> bool:
        """Written just before an insert's request leaves the process (naming this process).
        False when another process marked it first (the same insert delivered twice, running
        there): this one must not send."""
        ...

    async def insert_sender(self, job_id: str) -> str | None:
        """The process that sent an earlier delivery of this insert (which may have reached
        Salesforce), or None when none was sent."""
        ...

    async def sender_alive(self, sender: str) -> bool:
        """True while that process is alive elsewhere, so its result may still come."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
