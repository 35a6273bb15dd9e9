"""Salesforce REST client: runs one block operation for one account within the job's deadline.

Each call: take a slot of the account's concurrency cap, take a token, send, classify the answer
(errors.py), and then succeed, refresh the token once, retry with full-jitter backoff, or fail.
An insert whose request left this process but whose answer was lost is OUTCOME_UNKNOWN: it is
never sent a second time. Every response's Sforce-Limit-Info updates the account's usage.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from worker.config import Account, Settings
from worker.contract import (
    AnyJob,
    DeleteJob,
    ErrorCode,
    GetJob,
    InsertJob,
    Operation,
    ResultError,
    SearchJob,
    Status,
    UpdateJob,
    UpsertJob,
)
from worker.deadline import Deadline
from worker.observability.metrics import Metrics
from worker.salesforce.binding import bind_soql, bind_sosl
from worker.salesforce.errors import Classified, Verdict, classify
from worker.salesforce.http import SendState
from worker.salesforce.oauth import AuthError
from worker.salesforce.reserve import ApiReserve, LocalBoard
from worker.salesforce.slots import LocalSlots, Slots
from worker.salesforce.tokens import AccessToken, TokenManager
from worker.salesforce.usage import ApiUsage, UsageReading, parse_limit_info

log = logging.getLogger(__name__)

_MIN_BATCH = 200
_MAX_BATCH = 2000
_DEADLINE_MARGIN = 0.005


@dataclass
class Outcome:
    """What an operation produced; jobs.py adds the job's identity and timing."""

    status: Status
    records: list[dict[str, Any]] | None = None
    count: int | None = None
    id: str | None = None
    created: bool | None = None
    http_status: int | None = None
    error: ResultError | None = None
    attempts: int = 0


class CallFailed(Exception):
    """The operation ends failed (the error is final for this job)."""

    def __init__(self, error: ResultError, http_status: int | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.http_status = http_status


BeforeSend = Callable[[], Awaitable[bool]]


@dataclass
class _Response:
    status: int
    body: Any
    classified: Classified
    token: AccessToken


@dataclass
class _Call:
    """Bookkeeping of one operation: the calls it made and the last HTTP status seen."""

    account: Account
    operation: Operation
    deadline: Deadline
    attempts: int = 0
    retries: int = 0
    http_status: int | None = None
    idempotent: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)
    before_send: BeforeSend | None = None


def _error(code: ErrorCode, message: str, retryable: bool = False) -> ResultError:
    return ResultError(code=code, message=message, retryable=retryable)


def _timeout_error(call: _Call) -> CallFailed:
    return CallFailed(
        _error(ErrorCode.TIMEOUT, "the job's deadline passed before Salesforce answered", True),
        call.http_status,
    )


class SalesforceClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenManager,
        settings: Settings,
        metrics: Metrics,
        *,
        slots: Slots | None = None,
        reserve: ApiReserve | None = None,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._settings = settings
        self._metrics = metrics
        self._slots: Slots = slots or LocalSlots()
        self.reserve = reserve or ApiReserve(LocalBoard(), metrics)
        self.reserve.attach(self.read_limits)
        self._usage: dict[str, ApiUsage] = {}

    def usage(self, account: Account) -> ApiUsage:
        usage = self._usage.get(account.name)
        if usage is None:
            usage = self._usage[account.name] = ApiUsage()
        return usage

    # --- operations ------------------------------------------------------------------------

    async def execute(
        self,
        job: AnyJob,
        account: Account,
        deadline: Deadline,
        *,
        before_send: BeforeSend | None = None,
    ) -> Outcome:
        """Run the job's operation; never raises for anything Salesforce or the network does.
        `before_send` is awaited just before each request leaves the process (insert markers);
        when it answers False the request is not sent and SendRefused is raised.
        """
        call = _Call(account, Operation(job.operation), deadline, before_send=before_send)
        try:
            await self.reserve.ensure_known(account, deadline)
            match job:
                case SearchJob():
                    return await self._search(job, call)
                case GetJob():
                    return await self._get(job, call)
                case InsertJob():
                    return await self._insert(job, call)
                case UpdateJob():
                    return await self._update(job, call)
                case UpsertJob():
                    return await self._upsert(job, call)
                case DeleteJob():
                    return await self._delete(job, call)
        except CallFailed as failed:
            return Outcome(
                Status.FAILED,
                http_status=failed.http_status,
                error=failed.error,
                attempts=call.attempts,
            )
        raise AssertionError(f"unhandled operation {job.operation}")  # pragma: no cover

    async def _search(self, job: SearchJob, call: _Call) -> Outcome:
        base = call.account.api_base
        if job.soql is not None:
            statement = bind_soql(job.soql, job.params)
            batch = min(_MAX_BATCH, max(_MIN_BATCH, job.max_records))
            call.extra_headers["Sforce-Query-Options"] = f"batchSize={batch}"
            response = await self._request(call, "GET", f"{base}/query", params={"q": statement})
            body = response.body if isinstance(response.body, dict) else {}
            records: list[dict[str, Any]] = list(body.get("records") or [])
            total = int(body.get("totalSize") or 0)
            next_url = body.get("nextRecordsUrl")
            while next_url and not body.get("done", True) and len(records) < job.max_records:
                response = await self._request(
                    call, "GET", f"{call.account.instance_url}{next_url}"
                )
                body = response.body if isinstance(response.body, dict) else {}
                records.extend(body.get("records") or [])
                next_url = body.get("nextRecordsUrl")
            records = records[: job.max_records]
            status = Status.OK if total > 0 or records else Status.NO_DATA
            return self._outcome(call, status, records=records, count=total)
        assert job.sosl is not None
        statement = bind_sosl(job.sosl, job.params)
        response = await self._request(call, "GET", f"{base}/search", params={"q": statement})
        found = response.body.get("searchRecords") if isinstance(response.body, dict) else None
        found = found if isinstance(found, list) else []
        status = Status.OK if found else Status.NO_DATA
        return self._outcome(call, status, records=found[: job.max_records], count=len(found))

    async def _get(self, job: GetJob, call: _Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        params = {"fields": ",".join(job.fields)} if job.fields else None
        response = await self._request(call, "GET", url, params=params)
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        record = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, records=[record])

    async def _insert(self, job: InsertJob, call: _Call) -> Outcome:
        key_field = call.account.idempotency_fields.get(job.sobject)
        if key_field is not None:
            return await self._insert_by_job_id(job, key_field, call)
        call.idempotent = False
        url = f"{call.account.api_base}/sobjects/{job.sobject}"
        response = await self._request(call, "POST", url, json=dict(job.fields))
        body = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, id=body.get("id"))

    async def _insert_by_job_id(self, job: InsertJob, key_field: str, call: _Call) -> Outcome:
        """Idempotency-field mode: an upsert on an external-id field keyed by the job_id, so
        Salesforce itself keeps one record per job, however often the job runs."""
        value = quote(job.job_id, safe="")
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{key_field}/{value}"
        fields = {k: v for k, v in job.fields.items() if k.lower() != key_field.lower()}
        response = await self._request(call, "PATCH", url, json=fields)
        body = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, id=body.get("id"))

    async def _update(self, job: UpdateJob, call: _Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        response = await self._request(call, "PATCH", url, json=dict(job.fields))
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        return self._outcome(call, Status.OK)

    async def _upsert(self, job: UpsertJob, call: _Call) -> Outcome:
        value = quote(job.external_id, safe="")
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.external_id_field}/{value}"
        response = await self._request(call, "PATCH", url, json=dict(job.fields))
        body = response.body if isinstance(response.body, dict) else {}
        created = body.get("created")
        return self._outcome(
            call,
            Status.OK,
            id=body.get("id"),
            created=bool(created) if created is not None else response.status == 201,
        )

    async def _delete(self, job: DeleteJob, call: _Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        response = await self._request(call, "DELETE", url)
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        return self._outcome(call, Status.OK)

    @staticmethod
    def _outcome(call: _Call, status: Status, **fields: Any) -> Outcome:
        return Outcome(status, http_status=call.http_status, attempts=call.attempts, **fields)

    # --- one call, with token, retries and deadline -----------------------------------------

    async def _request(
        self,
        call: _Call,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> _Response:
        """Send until the answer is final; return it (success or no data) or raise CallFailed."""
        body = orjson.dumps(json) if json is not None else None
        refreshed = False
        while True:
            self._check_reserve(call)
            try:
                response = await self._exchange(call, method, url, params, body)
            except _Retryable as retry:
                await self._pause_before_retry(call, retry.reason, retry.error)
                continue
            classified = response.classified
            if classified.verdict in (Verdict.SUCCESS, Verdict.NO_DATA):
                return response
            if classified.verdict is Verdict.REFRESH and not refreshed:
                # Once per operation: a second INVALID_SESSION_ID with a fresh token is final.
                refreshed = True
                await self._tokens.invalidate(call.account, response.token)
                continue
            if classified.verdict is Verdict.RETRY:
                await self._pause_before_retry(call, classified.retry_reason, classified.to_error())
                continue
            raise CallFailed(classified.to_error(), response.status)

    def _check_reserve(self, call: _Call) -> None:
        refusal = self.reserve.refusal(call.account)
        if refusal is not None:
            self._metrics.rate_limited.labels(call.account.name, "reserve").inc()
            raise CallFailed(_error(ErrorCode.RATE_LIMITED, refusal, True), call.http_status)

    async def _pause_before_retry(self, call: _Call, reason: str, error: ResultError) -> None:
        """Sleep a full-jitter backoff before the next try, or raise CallFailed(error) when the
        attempts are spent or the pause would not end before the deadline."""
        s = self._settings
        if call.retries + 1 >= s.max_attempts:
            raise CallFailed(error, call.http_status)
        ceiling = min(s.retry_cap_ms, s.retry_base_ms * (2**call.retries)) / 1000
        delay = random.uniform(0, ceiling)
        if delay >= call.deadline.remaining() - _DEADLINE_MARGIN:
            raise CallFailed(error, call.http_status)
        call.retries += 1
        self._metrics.sf_retries.labels(call.account.name, call.operation.value, reason).inc()
        await asyncio.sleep(delay)

    async def _token(self, call: _Call) -> AccessToken:
        try:
            async with asyncio.timeout_at(call.deadline.at):
                return await self._tokens.get(call.account)
        except TimeoutError:
            raise _timeout_error(call) from None
        except AuthError as exc:
            raise CallFailed(
                ResultError(
                    code=exc.code,
                    message=exc.message,
                    retryable=exc.retryable,
                    salesforce_errors=exc.salesforce_errors(),
                ),
                exc.http_status or call.http_status,
            ) from None

    async def _exchange(
        self,
        call: _Call,
        method: str,
        url: str,
        params: dict[str, str] | None,
        body: bytes | None,
    ) -> _Response:
        """One HTTP call: a slot of the account's cap, then the token (read only now, so a call
        queued behind the cap never carries a token that died meanwhile), then send."""
        account, operation = call.account, call.operation.value
        headers = {"Accept": "application/json", **call.extra_headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        state = SendState(call.before_send)
        started = 0.0
        try:
            async with asyncio.timeout_at(call.deadline.at):
                async with self._slots.hold(account):
                    self._check_reserve(call)  # again: the reserve may be reached meanwhile
                    token = await self._token(call)
                    headers["Authorization"] = token.bearer
                    call.attempts += 1
                    started = time.perf_counter()
                    async with self._session.request(
                        method,
                        url,
                        params=params,
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        trace_request_ctx=state,
                    ) as response:
                        raw = await response.read()
                        status = response.status
                        limit_info = response.headers.get("Sforce-Limit-Info")
        except TimeoutError:
            self._count(account.name, operation, "timeout", started)
            if state.sent and not call.idempotent:
                raise CallFailed(
                    _outcome_unknown("the deadline passed"), call.http_status
                ) from None
            raise _timeout_error(call) from None
        except aiohttp.ClientError as exc:
            self._count(account.name, operation, "error", started)
            lost = f"connection lost ({type(exc).__name__})"
            if state.sent and not call.idempotent:
                raise CallFailed(_outcome_unknown(lost), call.http_status) from None
            reason = "connection_lost" if state.sent else "connection_failed"
            raise _Retryable(
                reason,
                _error(ErrorCode.SALESFORCE_UNAVAILABLE, f"Salesforce {lost}", True),
            ) from None
        self._count(account.name, operation, str(status), started)
        call.http_status = status
        self._record_usage(account, limit_info)
        parsed = _decode(raw)
        classified = classify(status, parsed, call.operation)
        if classified.code is ErrorCode.RATE_LIMITED:
            kind = "concurrent" if classified.retry_reason == "concurrent_limit" else "daily"
            self._metrics.rate_limited.labels(account.name, kind).inc()
        if classified.verdict is not Verdict.SUCCESS:
            log.info(
                "salesforce answered",
                extra={
                    "account": account.name,
                    "operation": operation,
                    "http_status": status,
                    "verdict": classified.verdict.value,
                    "sf_error": classified.errors[0].errorCode if classified.errors else "",
                },
            )
        return _Response(status, parsed, classified, token)

    def _count(self, account: str, operation: str, status: str, started: float) -> None:
        self._metrics.sf_requests.labels(account, operation, status).inc()
        if started:
            self._metrics.sf_request_duration.labels(account, operation).observe(
                time.perf_counter() - started
            )

    def _record_usage(self, account: Account, header: str | None) -> None:
        reading = parse_limit_info(header)
        if reading is None:
            return
        self.usage(account).update(reading)
        self.reserve.observe(account, reading)
        self._metrics.api_usage_used.labels(account.name).set(reading.used)
        self._metrics.api_usage_limit.labels(account.name).set(reading.limit)
        if reading.app_used is not None and reading.app_limit is not None:
            self._metrics.app_api_usage_used.labels(account.name).set(reading.app_used)
            self._metrics.app_api_usage_limit.labels(account.name).set(reading.app_limit)

    async def read_limits(self, account: Account) -> UsageReading | None:
        """The org's daily API usage from `/limits` (None when it cannot be read now)."""
        url = f"{account.api_base}/limits"
        for _ in range(2):
            try:
                async with asyncio.timeout(self._settings.token_timeout_seconds * 2):
                    token = await self._tokens.get(account)
                    async with self._session.get(
                        url,
                        headers={"Authorization": token.bearer, "Accept": "application/json"},
                        allow_redirects=False,
                    ) as response:
                        raw = await response.read()
                        status = response.status
                        header = response.headers.get("Sforce-Limit-Info")
            except (TimeoutError, aiohttp.ClientError, AuthError) as exc:
                log.info(
                    "reading /limits failed",
                    extra={"account": account.name, "error": type(exc).__name__},
                )
                return None
            self._metrics.sf_requests.labels(account.name, "limits", str(status)).inc()
            if status == 401:
                await self._tokens.invalidate(account, token)
                continue
            body = _decode(raw)
            daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
            if status == 200 and isinstance(daily, dict):
                limit = int(daily.get("Max") or 0)
                remaining = int(daily.get("Remaining") or 0)
                return UsageReading(used=max(0, limit - remaining), limit=limit)
            return parse_limit_info(header)
        return None


class _Retryable(Exception):
    def __init__(self, reason: str, error: ResultError) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error


def _outcome_unknown(what: str) -> ResultError:
    return _error(
        ErrorCode.OUTCOME_UNKNOWN,
        f"{what} after the insert was sent; Salesforce may or may not have created the record, "
        "so it is not sent again",
        False,
    )


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:2000].decode("utf-8", errors="replace")
