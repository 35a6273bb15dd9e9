"""The interface every store implements, in memory here and shared across workers later."""

from __future__ import annotations

from typing import Protocol


class ResultStore(Protocol):
    """Results of recent jobs by job_id, so a redelivered job is answered, not run again."""

    async def get(self, job_id: str) -> bytes | None: ...

    async def put(self, job_id: str, result: bytes) -> None: ...

    async def close(self) -> None: ...
