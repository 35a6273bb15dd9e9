"""One block job, top to bottom: read it, check it, check who sent it (the tenant), check its
deadline and account, call Salesforce, and say what to answer. RabbitMQ (receiving, replying,
acking) is runtime/'s job."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from worker.accounts import Accounts
from worker.contract import (
    CONTRACT_VERSION,
    AnyJob,
    BlockResult,
    ErrorCode,
    InsertJob,
    Operation,
    ResultError,
    Status,
    parse_job,
)
from worker.contract.fingerprint import differences, fingerprint
from worker.deadline import Deadline
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.salesforce.binding import BindingError
from worker.salesforce.client import SalesforceClient
from worker.salesforce.http import SendRefused
from worker.settings import Settings
from worker.stores.base import ResultStore, unpack_result
from worker.stores.memory import MemoryResultStore
from worker.tenancy import Reason, check, reply_allowed, store_key

log = logging.getLogger(__name__)
_OPERATIONS = {op.value for op in Operation}
_SENDER_POLL = 0.1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """A request as received, independent of the broker library."""

    body: bytes
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    timestamp: float | None = None  # AMQP timestamp, unix seconds
    user_id: str | None = None  # AMQP user_id, validated by the broker: who published it
    received_wall: float = 0.0
    received_mono: float = 0.0
    redelivered: bool = False  # the broker gave it to some consumer before


@dataclass(frozen=True)
class Decoded:
    """A request after reading: either a valid job, or the failed result that refuses it."""

    job_id: str
    job: AnyJob | None = None
    refusal: BlockResult | None = None
    reason: str = ""


@dataclass(frozen=True)
class Admission:
    """A valid job after the tenancy check: the job to run (its tenant the publisher's) and
    the key of its result in the store; or the refusal to answer, and why."""

    job: AnyJob
    key: str
    refusal: BlockResult | None = None
    reason: str = ""
    fingerprint: bytes = b""  # what binds `key` to this job (worker/contract/fingerprint.py)


def failed(
    job_id: str,
    code: ErrorCode,
    message: str,
    *,
    operation: Operation | None = None,
    account: str | None = None,
    retryable: bool = False,
) -> BlockResult:
    return BlockResult(
        job_id=job_id,
        operation=operation,
        account=account,
        status=Status.FAILED,
        error=ResultError(code=code, message=message, retryable=retryable),
    )


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


def decode(incoming: Incoming, max_bytes: int) -> Decoded:
    """Read and validate a request body; never raises."""
    fallback_id = (incoming.message_id or "")[:128]

    def refuse(
        reason: str, message: str, job_id: str = fallback_id, operation: Operation | None = None
    ) -> Decoded:
        refusal = failed(job_id, ErrorCode.INVALID_REQUEST, message, operation=operation)
        return Decoded(job_id, refusal=refusal, reason=reason)

    if len(incoming.body) > max_bytes:
        return refuse(
            "too_large", f"body is {len(incoming.body)} bytes, larger than the {max_bytes} allowed"
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
    return Decoded(job.job_id, job=job)


class JobRunner:
    """Executes valid jobs: deadline, account, Salesforce; returns the result to publish."""

    def __init__(
        self,
        accounts: Accounts,
        client: SalesforceClient,
        settings: Settings,
        metrics: Metrics,
        store: ResultStore | None = None,
    ) -> None:
        self._accounts = accounts
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._store: ResultStore = store or MemoryResultStore(
            settings.result_cache_size,
            settings.result_cache_ttl_seconds,
            max_bytes=settings.result_cache_max_bytes,
        )

    def admit(self, job: AnyJob, incoming: Incoming) -> Admission:
        """Who sent it: the tenancy check (worker/tenancy.py), before the result store, the
        account or Salesforce are touched. A refusal is counted and logged here."""
        verdict = check(self._accounts, incoming.user_id, job.account, job.tenant)
        if verdict.refused is None:
            if verdict.tenant != job.tenant:
                job = job.model_copy(update={"tenant": verdict.tenant})
            account = self._accounts.resolve(job.account, verdict.tenant)
            key = store_key(self._accounts, verdict.tenant, job.job_id, account)
            # A job whose account does not resolve (answered UNKNOWN_ACCOUNT) is kept apart
            # from every scoped key, which starts with 16 hex digits.
            return Admission(
                job,
                key if account is not None else f"none/{key}",
                fingerprint=fingerprint(job, account.name if account else job.account),
            )
        self._metrics.tenant_refusals.labels(verdict.refused.value, verdict.tenant or "").inc()
        log.warning(
            "job refused: not this publisher's tenant or account",
            extra={
                "job_id": job.job_id,
                "reason": verdict.refused.value,
                "user_id": incoming.user_id or "",
                "tenant": verdict.tenant or "",
                "account": job.account or "",
                "job_tenant": job.tenant or "",
            },
        )
        refusal = failed(
            job.job_id,
            ErrorCode.FORBIDDEN_ACCOUNT,
            verdict.message,
            operation=Operation(job.operation),
            account=job.account,
        )
        return Admission(job, job.job_id, refusal=refusal, reason=verdict.refused.value)

    def may_reply(self, job_id: str, incoming: Incoming) -> bool:
        """Where its result would go: in strict mode only to a queue its publisher may read
        (worker/tenancy.py). Checked before anything else, refusals included, since even a
        refusal would put a message of the publisher's making (its correlation id) into that
        queue. A forbidden reply_to is counted and logged here; the job is dead-lettered."""
        if reply_allowed(self._accounts, incoming.user_id, incoming.reply_to):
            return True
        owner = self._accounts.tenant_of_user(incoming.user_id) if incoming.user_id else None
        tenant = owner.name if owner is not None else ""
        self._metrics.tenant_refusals.labels(Reason.FORBIDDEN_REPLY_TO.value, tenant).inc()
        log.warning(
            "job refused: reply_to is not a queue of its publisher; dead-lettered, not run",
            extra={
                "job_id": job_id,
                "reason": Reason.FORBIDDEN_REPLY_TO.value,
                "user_id": incoming.user_id or "",
                "tenant": tenant,
                "reply_to": incoming.reply_to or "",
            },
        )
        return False

    def deadline(self, job: AnyJob, incoming: Incoming) -> Deadline:
        """The budget counts from sent_at, else the AMQP timestamp, else receipt. An AMQP
        timestamp has whole-second resolution: the budget then counts from the end of that
        second (or receipt, if earlier), so rounding never cuts a short budget."""
        if job.sent_at is not None:
            start = job.sent_at
        elif incoming.timestamp is not None:
            start = incoming.timestamp
            if start.is_integer():
                start = min(start + 1.0, incoming.received_wall)
        else:
            start = incoming.received_wall
        waited = max(0.0, incoming.received_wall - start)
        self._metrics.job_queue_wait.observe(waited)
        tracing.active.queue_wait(waited)
        return Deadline.from_budget(start, job.timeout_ms, now_wall=incoming.received_wall)

    async def _result_of_sender(
        self, key: str, sender: str, deadline: Deadline
    ) -> BlockResult | None:
        """The result of an earlier delivery still running in another live worker (its channel
        died, the broker redelivered the job here): wait for it within the deadline."""
        while True:
            stored = await self._store.get(key)
            if stored is not None:
                return BlockResult.model_validate_json(unpack_result(stored)[1])
            if deadline.remaining() <= _SENDER_POLL or not await self._store.sender_alive(sender):
                return None
            await asyncio.sleep(_SENDER_POLL)

    async def run(self, job: AnyJob, incoming: Incoming) -> BlockResult:
        operation = Operation(job.operation)
        deadline = self.deadline(job, incoming)
        if deadline.expired:
            return failed(
                job.job_id,
                ErrorCode.TIMEOUT,
                f"the job's {job.timeout_ms} ms budget had passed when it was received; "
                "Salesforce was not called",
                operation=operation,
                account=job.account,
                retryable=True,
            )
        account = self._accounts.resolve(job.account, job.tenant)
        if account is None:
            if job.account is not None:
                message = f"no account named {job.account!r}"
            elif job.tenant is not None:
                message = f"no account is marked default for tenant {job.tenant!r}"
            else:
                message = "no account is marked default"
            return failed(
                job.job_id,
                ErrorCode.UNKNOWN_ACCOUNT,
                message,
                operation=operation,
                account=job.account,
            )
        tracing.active.account(account.name, account.tenant)
        if job.tenant is not None and account.tenant != job.tenant:
            return failed(
                job.job_id,
                ErrorCode.FORBIDDEN_ACCOUNT,
                f"account {account.name!r} does not belong to tenant {job.tenant!r}",
                operation=operation,
                account=account.name,
            )
        before_send = None
        if isinstance(job, InsertJob) and job.sobject not in account.idempotency_fields:
            # Exactly once: an earlier delivery that may have reached Salesforce is not resent.
            # (Job ids are per tenant in strict mode: the key is the one admit() gave.)
            key = store_key(self._accounts, job.tenant, job.job_id, account)
            sender = await self._store.insert_sender(key)
            if sender is None and incoming.redelivered and self._store.blind():
                # A claim that cannot be read is no proof that none was made: an earlier
                # delivery may have sent it from another worker.
                return failed(
                    job.job_id,
                    ErrorCode.OUTCOME_UNKNOWN,
                    "this insert was delivered before and the fleet's record of what was sent "
                    "(Redis) is out of reach; Salesforce may or may not have created the record "
                    "from the earlier delivery, so it is not sent again",
                    operation=operation,
                    account=account.name,
                )
            if sender is not None:
                earlier = await self._result_of_sender(key, sender, deadline)
                if earlier is not None:
                    return earlier
                return failed(
                    job.job_id,
                    ErrorCode.OUTCOME_UNKNOWN,
                    "an earlier delivery of this insert was sent to Salesforce and its worker "
                    "stopped before answering; Salesforce may or may not have created the "
                    "record, so it is not sent again",
                    operation=operation,
                    account=account.name,
                )
            before_send = functools.partial(self._store.mark_insert_sent, key)
        try:
            outcome = await self._client.execute(job, account, deadline, before_send=before_send)
        except SendRefused:
            # The same insert, delivered twice, runs in another worker that marked it first:
            # its answer is this one's.
            sender = await self._store.insert_sender(key)
            earlier = await self._result_of_sender(key, sender, deadline) if sender else None
            if earlier is not None:
                return earlier
            return failed(
                job.job_id,
                ErrorCode.OUTCOME_UNKNOWN,
                "another delivery of this insert was being sent by another worker, whose "
                "answer did not come in time; Salesforce may or may not have created the "
                "record, so it is not sent again",
                operation=operation,
                account=account.name,
            )
        except BindingError as exc:
            return failed(
                job.job_id,
                ErrorCode.INVALID_REQUEST,
                str(exc),
                operation=operation,
                account=account.name,
            )
        result = BlockResult(
            job_id=job.job_id,
            operation=operation,
            account=account.name,
            status=outcome.status,
            count=outcome.count,
            id=outcome.id,
            created=outcome.created,
            http_status=outcome.http_status,
            error=outcome.error,
            attempts=outcome.attempts,
        )
        if outcome.records is None:
            return result
        # Salesforce's records as decoded from its JSON: nothing to check or convert, and
        # validating them copies every record (milliseconds for a 2,000-record search).
        return result.model_copy(update={"records": outcome.records})


def reused(admission: Admission, first: bytes) -> BlockResult:
    """The answer to a job whose id is still bound to another job (fingerprint `first`)."""
    job = admission.job
    parts = ", ".join(differences(first, admission.fingerprint)) or "what it asks"
    return failed(
        job.job_id,
        ErrorCode.JOB_ID_REUSED,
        f"this job_id was first used for another job (it differs in: {parts}); Salesforce "
        "was not called and the first job's result is kept. Give each job its own job_id",
        operation=Operation(job.operation),
        account=job.account,
    )


def too_large(result: BlockResult, size: int, limit: int) -> BlockResult:
    """RESULT_TOO_LARGE in place of a result of `size` bytes, over the `limit` a result may have
    (a message the broker would refuse, or one a caller would choke on)."""
    records = len(result.records or [])
    return result.model_copy(
        update={
            "status": Status.FAILED,
            "records": None,
            "error": ResultError(
                code=ErrorCode.RESULT_TOO_LARGE,
                message=f"the result is {size:,} bytes for {records:,} records, more than the "
                f"{limit:,} a result may have (SFWORKER_MAX_RESULT_BYTES); ask for fewer "
                "records (max_records) or fewer fields",
                retryable=False,
            ),
        }
    )


def finish(result: BlockResult, incoming: Incoming) -> BlockResult:
    """Stamp the duration (receipt to now) on a result about to be published."""
    elapsed_ms = int((time.monotonic() - incoming.received_mono) * 1000)
    return result.model_copy(update={"duration_ms": max(0, elapsed_ms)})


_RESULT_FIELDS = tuple(BlockResult.model_fields)


def result_json(result: BlockResult) -> bytes:
    """The result as published: JSON, fields in contract order. Records go to orjson as they
    are (plain JSON values decoded from Salesforce's answer), not through pydantic, which
    would walk every value of every record again."""
    data = result.model_dump(mode="json", exclude={"records"})
    records = result.records
    return orjson.dumps({k: records if k == "records" else data[k] for k in _RESULT_FIELDS})
