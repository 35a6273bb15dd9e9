"""API usage as Salesforce reports it on every response (`Sforce-Limit-Info`).

`api-usage=USED/LIMIT`: LIMIT is the org's rolling 24-hour allowance, not what remains.
`per-app-api-usage=USED/LIMIT(appName=NAME)`: the connected app's own share, when it has one.
"""

from __future__ import annotations

import re

from worker.stores.usage_board import UsageReading

_API_USAGE = re.compile(r"(?<![-\w])api-usage=(\d+)/(\d+)")
_PER_APP = re.compile(r"per-app-api-usage=(\d+)/(\d+)\(appName=([^)]*)\)")


def parse_limit_info(header: str | None) -> UsageReading | None:
    """The reading in a `Sforce-Limit-Info` header, or None when there is none."""
    if not header:
        return None
    org = _API_USAGE.search(header)
    if not org:
        return None
    app = _PER_APP.search(header)
    return UsageReading(
        used=int(org.group(1)),
        limit=int(org.group(2)),
        app_used=int(app.group(1)) if app else None,
        app_limit=int(app.group(2)) if app else None,
        app_name=app.group(3) if app else None,
    )
