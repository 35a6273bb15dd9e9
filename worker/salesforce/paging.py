"""The next page of a SOQL query: `nextRecordsUrl` comes from the answer, so it is data from
outside. It is followed only when it is a path under `/services/data/` on the account's own
instance; anything else (another host, a scheme, `..` segments, `@` tricks, backslashes) is
refused before a request (and the bearer token) leaves."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

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
