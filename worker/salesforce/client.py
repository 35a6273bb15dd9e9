"""Salesforce REST client: runs one block operation for one account within the job's deadline.

Each call: take a slot of the account's concurrency cap, take a token, send, classify the answer
(errors.py), and then succeed, refresh the token once, retry with full-jitter backoff, or fail.
An insert whose request left this process but whose answer was lost is OUTCOME_UNKNOWN: it is
never sent a second time. Every response's Sforce-Limit-Info goes to the API reserve (and the
usage gauges).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from typing import Any

import aiohttp
import orjson

from worker.accounts import Account
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
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.salesforce import composite
from worker.salesforce.binding import bind_soql, bind_sosl, path_segment
from worker.salesforce.calls import (
    Answer,
    BeforeSend,
    Call,
    CallFailed,
    Outcome,
    Pending,
    Response,
    Retryable,
    auth_failed,
    decode,
    error,
    lost,
    outcome_unknown,
    timeout_error,
    too_large,
)
from worker.salesforce.coalesce import Coalescer
from worker.salesforce.errors import Verdict, classify
from worker.salesforce.http import (
    ResponseTooLarge,
    SendRefused,
    SendState,
    read_capped,
    untraced,
)
from worker.salesforce.oauth import AuthError
from worker.salesforce.paging import next_page_url
from worker.salesforce.reserve import ApiReserve, LocalBoard
from worker.salesforce.tokens import AccessToken, TokenManager
from worker.salesforce.usage import parse_limit_info
from worker.settings import Settings
from worker.stores.slots import LocalSlots, Slots
from worker.stores.usage import UsageReading

log = logging.getLogger(__name__)

_MIN_BATCH = 200
_MAX_BATCH = 2000
_DEADLINE_MARGIN = 0.005


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
        self._plain = untraced(session)
        self._tokens = tokens
        self._settings = settings
        self._metrics = metrics
        self._slots: Slots = slots or LocalSlots()
        self.reserve = reserve or ApiReserve(LocalBoard(), metrics)
        self.reserve.attach(self.read_limits)
        self._coalescer: Coalescer[Pending, Answer] = Coalescer(
            settings.coalesce_wait_ms / 1000, tracing.composite(self._together), metrics
        )

    async def close(self) -> None:
        await self._coalescer.close()
        await self._plain.close()

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
        call = Call(account, Operation(job.operation), deadline, before_send=before_send)
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

    async def _search(self, job: SearchJob, call: Call) -> Outcome:
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
                url = next_page_url(call.account, next_url)
                if url is None:
                    raise CallFailed(
                        error(
                            ErrorCode.SALESFORCE_ERROR,
                            "Salesforce's answer named a next page that is not a path under "
                            "/services/data/ on the account's instance; it was not followed",
                        ),
                        call.http_status,
                    )
                response = await self._request(call, "GET", url)
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

    async def _get(self, job: GetJob, call: Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        params = {"fields": ",".join(job.fields)} if job.fields else None
        response = await self._request(call, "GET", url, params=params)
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        record = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, records=[record])

    async def _insert(self, job: InsertJob, call: Call) -> Outcome:
        key_field = call.account.idempotency_fields.get(job.sobject)
        if key_field is not None:
            return await self._insert_by_job_id(job, key_field, call)
        call.idempotent = False
        url = f"{call.account.api_base}/sobjects/{job.sobject}"
        response = await self._request(call, "POST", url, json=dict(job.fields))
        body = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, id=body.get("id"))

    async def _insert_by_job_id(self, job: InsertJob, key_field: str, call: Call) -> Outcome:
        """Idempotency-field mode: an upsert on an external-id field keyed by the job_id, so
        Salesforce itself keeps one record per job, however often the job runs."""
        value = path_segment(job.job_id, "job_id (the idempotency field's value)")
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{key_field}/{value}"
        fields = {k: v for k, v in job.fields.items() if k.lower() != key_field.lower()}
        response = await self._request(call, "PATCH", url, json=fields)
        body = response.body if isinstance(response.body, dict) else {}
        return self._outcome(call, Status.OK, id=body.get("id"))

    async def _update(self, job: UpdateJob, call: Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        response = await self._request(call, "PATCH", url, json=dict(job.fields))
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        return self._outcome(call, Status.OK)

    async def _upsert(self, job: UpsertJob, call: Call) -> Outcome:
        value = path_segment(job.external_id, "external_id")
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

    async def _delete(self, job: DeleteJob, call: Call) -> Outcome:
        url = f"{call.account.api_base}/sobjects/{job.sobject}/{job.id}"
        response = await self._request(call, "DELETE", url)
        if response.classified.verdict is Verdict.NO_DATA:
            return self._outcome(call, Status.NO_DATA)
        return self._outcome(call, Status.OK)

    @staticmethod
    def _outcome(call: Call, status: Status, **fields: Any) -> Outcome:
        return Outcome(status, http_status=call.http_status, attempts=call.attempts, **fields)

    # --- one call, with token, retries and deadline -----------------------------------------

    async def _request(
        self,
        call: Call,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> Response:
        """Send until the answer is final; return it (success or no data) or raise CallFailed."""
        body = orjson.dumps(json) if json is not None else None
        refreshed = False
        while True:
            self._check_reserve(call)
            try:
                response = await self._send(call, method, url, params, body)
            except Retryable as retry:
                await self._pause_before_retry(call, retry.reason, retry.error)
                continue
            classified = response.classified
            if classified.verdict in (Verdict.SUCCESS, Verdict.NO_DATA):
                return response
            if classified.verdict is Verdict.REFRESH and not refreshed:
                # Once per operation: a second INVALID_SESSION_ID with a fresh token is final.
                # The token was invalidated when the 401 came in, before its slot was freed.
                refreshed = True
                continue
            if classified.verdict is Verdict.RETRY:
                await self._pause_before_retry(call, classified.retry_reason, classified.to_error())
                continue
            raise CallFailed(classified.to_error(), response.status)

    def _check_reserve(self, call: Call) -> None:
        refused = self._reserve_refusal(call)
        if refused is not None:
            raise refused

    def _reserve_refusal(self, call: Call) -> CallFailed | None:
        refusal = self.reserve.refusal(call.account)
        if refusal is None:
            return None
        self._metrics.rate_limited.labels(call.account.name, "reserve").inc()
        return CallFailed(error(ErrorCode.RATE_LIMITED, refusal, True), call.http_status)

    async def _pause_before_retry(self, call: Call, reason: str, error: ResultError) -> None:
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
        tracing.active.event("retry", {"reason": reason, "delay_ms": round(delay * 1000, 1)})
        self._metrics.sf_retries.labels(call.account.name, call.operation.value, reason).inc()
        await asyncio.sleep(delay)

    async def _token(self, call: Call) -> AccessToken:
        token = self._tokens.cached(call.account)
        if token is not None:  # the usual case: no wait, so no timeout to arm
            return token
        try:
            async with asyncio.timeout_at(call.deadline.at):
                with tracing.active.span("token wait"):
                    return await self._tokens.get(call.account)
        except TimeoutError:
            raise timeout_error(call) from None
        except AuthError as exc:
            raise auth_failed(call, exc) from None

    async def _send(
        self,
        call: Call,
        method: str,
        url: str,
        params: dict[str, str] | None,
        body: bytes | None,
    ) -> Response:
        """One attempt of a call: inside a Composite request with other jobs' calls ready at
        about the same time (coalesce.py), or alone when it finds no company."""
        sub = composite.Subrequest(method, url, params, body, dict(call.extra_headers))
        account = call.account
        if self._coalescer.enabled(account) and composite.supports(account, sub):
            pending = Pending(call, sub)
            query = composite.is_query(account, sub)
            try:
                async with asyncio.timeout_at(call.deadline.at):
                    with tracing.active.coalescing() as pending.trace:
                        answer = await self._coalescer.join(
                            account, pending, deadline=call.deadline, query=query
                        )
            except TimeoutError:
                pending.abandoned = True
                if pending.committed and not call.idempotent:
                    raise CallFailed(outcome_unknown("the deadline passed"), None) from None
                raise timeout_error(call) from None
            except asyncio.CancelledError:
                pending.abandoned = True
                raise
            if isinstance(answer, Exception):
                raise answer
            if answer is not None:
                return answer
        return await self._exchange(call, method, url, params, body)

    async def _together(self, account: Account, group: list[Pending]) -> list[Answer]:
        """One Composite request carrying calls of several jobs: a slot of the account's cap,
        the reserve checked again, the token, each insert's exactly-once claim, send; then each
        call's own answer, or what the whole request's failure means for each job."""
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        state = SendState()
        started = 0.0
        try:
            async with asyncio.timeout_at(max(p.call.deadline.at for p in group)):
                async with tracing.active.waiting(self._slots.hold(account), "slot wait"):
                    for pending in group:
                        pending.unsent = self._reserve_refusal(pending.call)
                    if all(p.unsent is not None for p in group):
                        return [p.unsent for p in group if p.unsent is not None]
                    token = await self._tokens.get(account)
                    headers["Authorization"] = token.bearer
                    sent = await self._claim(group)
                    if not sent:
                        return [p.unsent for p in group if p.unsent is not None]
                    body = composite.request_body(account, [p.sub for p in sent])
                    started = time.perf_counter()
                    async with self._session.post(
                        f"{account.api_base}/composite",
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        trace_request_ctx=state,
                    ) as response:
                        status = response.status
                        limit_info = response.headers.get("Sforce-Limit-Info")
                        raw = await read_capped(response, self._settings.max_response_bytes)
                    parsed = decode(raw)
                    answers = composite.answers(parsed, len(sent)) if status == 200 else None
                    if _session_died(status, parsed, answers):
                        await self._tokens.invalidate(account, token)
        except AuthError as exc:
            return [p.unsent or auth_failed(p.call, exc) for p in group]
        except ResponseTooLarge as exc:
            self._count(account.name, "composite", "too_large", started)
            return [p.unsent or too_large(p.call, state, exc) for p in group]
        except TimeoutError:
            self._count(account.name, "composite", "timeout", started)
            return [p.unsent or lost(p.call, state, "the deadline passed", True) for p in group]
        except aiohttp.ClientError as exc:
            self._count(account.name, "composite", "error", started)
            what = f"connection lost ({type(exc).__name__})"
            return [p.unsent or lost(p.call, state, what) for p in group]
        self._count(account.name, "composite", str(status), started)
        self._record_usage(account, limit_info)
        if status == 200 and answers is None:
            unreadable = "Composite answer unreadable"
            return [p.unsent or lost(p.call, state, unreadable) for p in group]
        results: list[Answer] = []
        each = iter(answers or [])
        for pending in group:
            if pending.unsent is not None:
                results.append(pending.unsent)
            elif answers is None:
                # The request failed as a whole (401, the daily limit, 5xx): so did each call.
                results.append(self._answer(pending.call, status, parsed, token))
            else:
                answer = next(each)
                results.append(self._answer(pending.call, answer.status, answer.body, token))
        return results

    @staticmethod
    async def _claim(group: list[Pending]) -> list[Pending]:
        """The calls that go: not those whose job stopped waiting, nor inserts whose claim
        another delivery holds. From here on a job that stops waiting cannot take its call
        back (`committed`)."""
        for pending in group:
            if pending.unsent is None and pending.abandoned:
                pending.unsent = timeout_error(pending.call)
            elif pending.unsent is None:
                pending.committed = True
        # The inserts' claims at once (one round trip for the group, not one each): the window
        # in which a claimed insert has not left yet stays as short as one claim.
        claiming = [p for p in group if p.committed and p.call.before_send is not None]
        claimed = await asyncio.gather(
            *(p.call.before_send() for p in claiming if p.call.before_send is not None)
        )
        for pending, ok in zip(claiming, claimed, strict=True):
            if not ok:
                pending.unsent = SendRefused()  # the same insert is being sent elsewhere
        sent = [p for p in group if p.unsent is None]
        for pending in sent:
            pending.call.attempts += 1
        return sent

    async def _exchange(
        self,
        call: Call,
        method: str,
        url: str,
        params: dict[str, str] | None,
        body: bytes | None,
    ) -> Response:
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
                async with tracing.active.waiting(self._slots.hold(account), "slot wait"):
                    self._check_reserve(call)  # again: the reserve may be reached meanwhile
                    token = await self._token(call)
                    headers["Authorization"] = token.bearer
                    call.attempts += 1
                    started = time.perf_counter()
                    # Whether the request left matters only for an insert's lost answer; a
                    # traced job's calls take the session with the HTTP span hooks too.
                    traced = call.before_send is not None or not call.idempotent
                    traced = traced or tracing.traced_job()
                    http = self._session if traced else self._plain
                    async with http.request(
                        method,
                        url,
                        params=params,
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        trace_request_ctx=state,
                    ) as response:
                        status = response.status
                        limit_info = response.headers.get("Sforce-Limit-Info")
                        raw = await read_capped(response, self._settings.max_response_bytes)
                    parsed = decode(raw)
                    if _session_died(status, parsed, None):
                        await self._tokens.invalidate(account, token)
        except ResponseTooLarge as exc:
            self._count(account.name, operation, "too_large", started)
            raise too_large(call, state, exc) from None
        except TimeoutError:
            self._count(account.name, operation, "timeout", started)
            raise lost(call, state, "the deadline passed", timeout=True) from None
        except aiohttp.ClientError as exc:
            self._count(account.name, operation, "error", started)
            what = f"connection lost ({type(exc).__name__})"
            raise lost(call, state, what) from None
        self._count(account.name, operation, str(status), started)
        self._record_usage(account, limit_info)
        return self._answer(call, status, parsed, token)

    def _answer(self, call: Call, status: int, parsed: Any, token: AccessToken) -> Response:
        """What Salesforce's answer (to a single call, or to one subrequest) means for the job."""
        account, operation = call.account, call.operation.value
        call.http_status = status
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
        return Response(status, parsed, classified, token)

    def _count(self, account: str, operation: str, status: str, started: float) -> None:
        self._metrics.sf_requests.labels(account, operation, status).inc()
        if started:
            self._metrics.sf_request_duration.labels(account, operation).observe(
                time.perf_counter() - started, tracing.exemplar()
            )

    def _record_usage(self, account: Account, header: str | None) -> None:
        reading = parse_limit_info(header)
        if reading is not None:
            self.reserve.observe(account, reading)  # and the usage gauges

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
                        raw = await read_capped(response, self._settings.max_response_bytes)
                        status = response.status
                        header = response.headers.get("Sforce-Limit-Info")
            except (TimeoutError, aiohttp.ClientError, AuthError, ResponseTooLarge) as exc:
                log.info(
                    "reading /limits failed",
                    extra={"account": account.name, "error": type(exc).__name__},
                )
                return None
            self._metrics.sf_requests.labels(account.name, "limits", str(status)).inc()
            if status == 401:
                await self._tokens.invalidate(account, token)
                continue
            body = decode(raw)
            daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
            stamped = parse_limit_info(header)
            if status == 200 and isinstance(daily, dict):
                limit = int(daily.get("Max") or 0)
                remaining = int(daily.get("Remaining") or 0)
                org = UsageReading(used=max(0, limit - remaining), limit=limit)
                if stamped is None:
                    return org
                # The connected app's share is only in the header.
                return dataclasses.replace(stamped, used=org.used, limit=org.limit)
            return stamped
        return None


def _session_died(status: int, parsed: Any, answers: list[composite.SubAnswer] | None) -> bool:
    """Salesforce said INVALID_SESSION_ID (to the request, or to one of its subrequests): the
    token must be dropped before the slot is freed, or a call granted that slot next would
    start with it."""
    if status == 401:
        return classify(status, parsed, Operation.SEARCH).verdict is Verdict.REFRESH
    return any(
        a.status == 401 and classify(a.status, a.body, Operation.SEARCH).verdict is Verdict.REFRESH
        for a in answers or ()
    )
