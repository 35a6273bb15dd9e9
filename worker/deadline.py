"""A job's deadline: the caller hangs up when it passes, so every wait is bounded by it."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock (the event loop's clock on Linux)."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_budget(
        cls, start_wall: float, timeout_ms: int, now_wall: float | None = None
    ) -> Deadline:
        """Deadline of a job whose budget of `timeout_ms` started at unix time `start_wall`."""
        now_wall = time.time() if now_wall is None else now_wall
        elapsed = max(0.0, now_wall - start_wall)
        return cls(time.monotonic() + timeout_ms / 1000 - elapsed)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0
