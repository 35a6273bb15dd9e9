"""The moment a Composite request's calls are committed: the calls whose job stopped waiting
drop out, the inserts' markers are written together, and what is left is sent."""

from __future__ import annotations

import asyncio

from worker.salesforce.call import Attempt
from worker.salesforce.failures import timeout_error
from worker.salesforce.http import SendRefused


async def commit_group(group: list[Attempt]) -> list[Attempt]:
    """The calls of a Composite request that go: not those whose job stopped waiting, nor
    inserts whose marker another delivery holds. From here on a job that stops waiting cannot
    take its call back (`committed`)."""
    for attempt in group:
        if attempt.unsent is None and attempt.abandoned:
            attempt.unsent = timeout_error(attempt.call)
        elif attempt.unsent is None:
            attempt.committed = True
    # The inserts' markers at once (one round trip for the group, not one each): the window in
    # which a marked insert has not left yet stays as short as one claim.
    marking = [a for a in group if a.committed and a.call.before_send is not None]
    marked = await asyncio.gather(
        *(a.call.before_send() for a in marking if a.call.before_send is not None)
    )
    for attempt, ok in zip(marking, marked, strict=True):
        if not ok:
            attempt.unsent = SendRefused()  # the same insert is being sent elsewhere
    return [a for a in group if a.unsent is None]
