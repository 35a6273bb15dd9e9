"""The next page of a SOQL query: `nextRecordsUrl` comes from the answer, so it is data from
outside. It is followed only when it is a path under `/services/data/` on the account's own
instance; anything else (another host, a scheme, `..` segments, `@` tricks, backslashes) is
refused before a request (and the bearer token) leaves.

The pages' records are collected as they come (`Collected`), each page counted in the bytes it
adds to the result: past the result cap (SFWORKER_MAX_RESULT_BYTES) no further page is asked
for, and the job is answered RESULT_TOO_LARGE with the count so far, rather than every page
being held and the whole result serialised before the cap is checked."""

from __future__ import annotations

import posixpath
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from worker.accounts import Account

_DATA_ROOT = "/services/data/"


def next_page_url(account: Account, next_url: object) -> str | None:
    """The absolute URL of the next page, or None when `next_url` is not one to follow."""
    if not isinstance(next_url, str) or not next_url.startswith(_DATA_ROOT):
        return None
    if any(c in next_url for c in "\\@#") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in next_url):
        return None
    path = next_url.split("?", 1)[0]
    decoded = unquote(path)
    if posixpath.normpath(decoded) != decoded.rstrip("/") or "//" in decoded:
        return None  # `.` or `..` segments, or empty ones: normalisation would move it
    url = account.instance_url + next_url
    ours, theirs = urlsplit(account.instance_url), urlsplit(url)
    if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
        return None
    return url


class Collected:
    """The records of a query's pages, up to the job's `max_records`, and their size in the
    result (JSON) so far."""

    def __init__(self, max_records: int, max_bytes: int) -> None:
        self.records: list[dict[str, Any]] = []
        self.size = 2  # []
        self._max_records = max_records
        self._max_bytes = max_bytes

    @property
    def full(self) -> bool:
        return len(self.records) >= self._max_records

    @property
    def over(self) -> bool:
        """Past the result cap: the result cannot be sent, whatever the next pages hold."""
        return self.size > self._max_bytes

    def add(self, page: Any) -> None:
        if not isinstance(page, list):
            return
        taken = page[: self._max_records - len(self.records)]
        if taken:
            self.size += len(orjson.dumps(taken)) - 2 + (1 if self.records else 0)
            self.records.extend(taken)

    def too_large(self, total: int) -> str:
        return (
            f"the result is more than {self._max_bytes:,} bytes for {total:,} records (the cap "
            f"was passed at record {len(self.records):,}: no further page was read), more than "
            "a result may have (SFWORKER_MAX_RESULT_BYTES); ask for fewer records "
            "(max_records) or fewer fields"
        )
