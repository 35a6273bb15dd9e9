"""Query locators: the pages of a query result still to be fetched with nextRecordsUrl."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .ids import IdFactory
from .schema import Record

LOCATOR_PREFIX = "01g"
CURSOR_IDLE_SECONDS = 15 * 60
MIN_BATCH, MAX_BATCH = 200, 2000


@dataclass
class Cursor:
    records: list[Record]
    batch_size: int
    last_used: float = field(default_factory=time.monotonic)


def clamp_batch(size: int | None) -> int:
    if size is None:
        return MAX_BATCH
    return max(MIN_BATCH, min(MAX_BATCH, size))


class CursorStore:
    def __init__(self, ids: IdFactory) -> None:
        self._ids = ids
        self._cursors: dict[str, Cursor] = {}

    def open(self, records: list[Record], batch_size: int) -> str:
        self._prune()
        locator = self._ids.new(LOCATOR_PREFIX)
        self._cursors[locator] = Cursor(records, batch_size)
        return locator

    def get(self, locator: str) -> Cursor | None:
        self._prune()
        cursor = self._cursors.get(locator)
        if cursor is not None:
            cursor.last_used = time.monotonic()
        return cursor

    def close(self, locator: str) -> None:
        self._cursors.pop(locator, None)

    def _prune(self) -> None:
        now = time.monotonic()
        for locator in [
            k for k, c in self._cursors.items() if now - c.last_used > CURSOR_IDLE_SECONDS
        ]:
            del self._cursors[locator]
