"""An org's API usage reading: what the usage board shares across the fleet and the client
reads from every response (`worker.salesforce.usage` parses it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UsageReading:
    used: int
    limit: int
    app_used: int | None = None
    app_limit: int | None = None
    app_name: str | None = None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def fraction_used(self) -> float:
        return self.used / self.limit if self.limit else 0.0
