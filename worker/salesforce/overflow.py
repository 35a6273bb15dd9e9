"""Each call inside a Composite request is judged by its own answer, never by its neighbours'.

A Composite response may be as large as its parts allow (SFWORKER_MAX_RESPONSE_BYTES each), as
far as the memory budget lets the job it is counted on hold it. When its reading stops before
the end (too large, or no room), each call gets what was read of it: a part complete in what
was read is its answer; a read cut off is sent again alone (`SendAlone`: the same call alone is
what it would have been without company); an insert cut off is OUTCOME_UNKNOWN, but inserts
travel first in the request (composite.request_body), so their small answers come first and are
read. A part larger than one answer may be alone is RESULT_TOO_LARGE, as it would be alone.
"""

from __future__ import annotations

import orjson

from worker.memory import Reading, shared
from worker.salesforce import composite
from worker.salesforce.call import Attempt, Call
from worker.salesforce.failures import too_large
from worker.salesforce.http import ResponseTooLarge, SendState

Part = tuple[Call, composite.SubAnswer] | Exception


class SendAlone(Exception):
    """A read whose answer was cut off in a Composite response: it goes again, alone."""


def counted_on(sent: list[Attempt]) -> Reading | None:
    """What a request's reading is counted on: its job's hold; for several jobs, a hold in the
    place of the oldest (never held back by its company), then each job's share."""
    return shared(a.call.memory for a in sent)


def read_parts(
    attempts: list[Attempt], exc: ResponseTooLarge, state: SendState, max_bytes: int
) -> list[Part]:
    """Each attempt's answer out of the part of the response that was read."""
    sent = [a for a in attempts if a.unsent is None]
    found = composite.leading_answers(exc.prefix, len(sent))
    parts: list[Part] = []
    index = 0
    for attempt in attempts:
        if attempt.unsent is not None:
            parts.append(attempt.unsent)
            continue
        sub = found.get(index)
        index += 1
        if sub is not None:
            parts.append(_alone(attempt.call, sub, max_bytes))
        elif attempt.call.idempotent:
            parts.append(SendAlone())
        else:
            parts.append(too_large(attempt.call, state, exc))
    return parts


def judged_alone(
    attempts: list[Attempt], each: list[composite.SubAnswer], max_bytes: int
) -> list[Part]:
    """The parts of a response larger than one answer may be: each judged by its own size."""
    answers = iter(each)  # one for each call sent, in order
    return [a.unsent or _alone(a.call, next(answers), max_bytes) for a in attempts]


def _alone(call: Call, sub: composite.SubAnswer, max_bytes: int) -> Part:
    """A read's part larger than SFWORKER_MAX_RESPONSE_BYTES is RESULT_TOO_LARGE, as alone."""
    if call.idempotent and sub.body is not None and len(orjson.dumps(sub.body)) > max_bytes:
        return too_large(call, None, ResponseTooLarge(max_bytes))
    return (call, sub)
