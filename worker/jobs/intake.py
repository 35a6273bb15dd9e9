"""A delivery read and checked, before anything is claimed or called: its size, JSON, the v1
schema, a forged `x-death`, and (once the account is known) the binding of its parameters.
Nothing here raises: every odd request becomes a refusal the pipeline answers or dead-letters."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from worker.accounts import Account
from worker.contract import (
    CONTRACT_VERSION,
    AnyJob,
    BlockResult,
    ErrorCode,
    InsertJob,
    Operation,
    SearchJob,
    UpsertJob,
    parse_job,
)
from worker.jobs.answers import failed
from worker.salesforce.binding import BindingError, bind_soql, bind_sosl, path_segment

log = logging.getLogger(__name__)
_OPERATIONS = {op.value for op in Operation}

FORGED_DEATH = "forged_x_death"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request as received, independent of the broker library: what the pipeline and the
    lanes need to decide it."""

    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: float | None = None  # AMQP timestamp, unix seconds
    # Who published it: the AMQP user_id (validated by the broker), or for a job the worker
    # moved to a lane, the publisher it vouched for (worker/runtime/lanes.py).
    user_id: str | None = None
    received_wall: float = 0.0
    received_mono: float = 0.0
    redelivered: bool = False  # the broker gave it to some consumer before
    headers: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A request after reading: either a valid job, or the failed result that refuses it."""

    job_id: str
    job: AnyJob | None = None
    refusal: BlockResult | None = None
    reason: str = ""


def _validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as `field: problem`, without the offending input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:10]:
        loc = [str(p) for p in error["loc"]]
        # The first element of a tagged union's location is the operation tag itself.
        where = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "")
        msg = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def read_request(incoming: Incoming, max_bytes: int) -> Request:
    """Read and validate a request body; never raises."""
    fallback_id = (incoming.message_id or "")[:128]

    def refuse(
        reason: str, message: str, job_id: str = fallback_id, operation: Operation | None = None
    ) -> Request:
        refusal = failed(job_id, ErrorCode.INVALID_REQUEST, message, operation=operation)
        return Request(job_id, refusal=refusal, reason=reason)

    if len(incoming.body) > max_bytes:
        return refuse(
            "too_large",
            f"body is {len(incoming.body)} bytes, larger than the {max_bytes} allowed",
        )
    try:
        data: Any = orjson.loads(incoming.body)
    except orjson.JSONDecodeError as exc:
        return refuse("not_json", f"body is not JSON ({exc.msg})")
    if not isinstance(data, dict):
        return refuse("not_object", f"body is a JSON {type(data).__name__}, not an object")
    raw_id = data.get("job_id")
    job_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else fallback_id
    raw_operation = data.get("operation")
    # Any JSON value may stand here (a list or an object is not hashable): only a known name
    # is an operation.
    operation = (
        Operation(raw_operation)
        if isinstance(raw_operation, str) and raw_operation in _OPERATIONS
        else None
    )
    version = data.get("v")
    # `true` and `1.0` compare equal to 1 in Python; the contract wants the integer 1.
    if type(version) is not int or version != CONTRACT_VERSION:
        shown = repr(version)[:40]
        return refuse(
            "bad_version",
            f"unsupported contract version v={shown}; this worker speaks v1",
            job_id,
            operation,
        )
    try:
        job = parse_job(data)
    except ValidationError as exc:
        return refuse("invalid", _validation_message(exc), job_id, operation)
    except Exception:  # a validator bug must not leave the caller without an answer
        log.exception("unexpected error while validating a request", extra={"job_id": job_id})
        return refuse("invalid", "the request could not be validated", job_id, operation)
    return Request(job.job_id, job=job)


def forged_death(headers: Mapping[str, Any] | None) -> bool:
    """True when an `x-death` header has what RabbitMQ never writes and cannot dead-letter: an
    array entry that is not a table, or a `count` that is not an integer."""
    deaths = (headers or {}).get("x-death")
    if not isinstance(deaths, list):
        return False  # absent, or a value RabbitMQ ignores
    for death in deaths:
        if not isinstance(death, dict):
            return True
        count = death.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            return True
    return False


def refuse_forged(request: Request) -> Request:
    """INVALID_REQUEST for a request whose `x-death` RabbitMQ did not write."""
    operation: Operation | None = None
    if request.job is not None:
        operation = Operation(request.job.operation)
    elif request.refusal is not None:
        operation = request.refusal.operation
    refusal = failed(
        request.job_id,
        ErrorCode.INVALID_REQUEST,
        "header x-death is reserved for RabbitMQ and this one is malformed "
        "(an entry that is not a table, or a count that is not an integer)",
        operation=operation,
    )
    return Request(request.job_id, refusal=refusal, reason=FORGED_DEATH)


def bind(job: AnyJob, account: Account) -> tuple[str | None, str | None]:
    """The job's parameters bound where they go: (the search's statement with its values in,
    None) or (None, what is wrong: a `:param` without a value, a value of the wrong kind for
    its place, a path segment that names another resource). The statement travels with the
    admission to the Salesforce client, which then does not bind it again."""
    statement: str | None = None
    try:
        if isinstance(job, SearchJob):
            if job.soql is not None:
                statement = bind_soql(job.soql, job.params)
            elif job.sosl is not None:
                statement = bind_sosl(job.sosl, job.params)
        elif isinstance(job, UpsertJob):
            path_segment(job.external_id, "external_id")
        elif isinstance(job, InsertJob) and job.sobject in account.idempotency_fields:
            path_segment(job.job_id, "job_id (the idempotency field's value)")
    except BindingError as exc:
        return None, str(exc)
    return statement, None


def log_history(incoming: Incoming, job_id: str) -> None:
    """A delivery that was dead-lettered or delivered before, in the log."""
    headers = incoming.headers or {}
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths:
        first = deaths[0] if isinstance(deaths[0], dict) else {}
        log.warning(
            "message was dead-lettered before",
            extra={
                "job_id": job_id,
                "death_reason": str(first.get("reason", "")),
                "death_queue": str(first.get("queue", "")),
                "death_count": _int(first.get("count")),
            },
        )
    count = headers.get("x-delivery-count")
    if incoming.redelivered or count:
        log.info("redelivered job", extra={"job_id": job_id, "delivery_count": _int(count)})


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
