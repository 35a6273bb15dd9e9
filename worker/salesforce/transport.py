"""The one transport to Salesforce: every request a job's call makes, alone or inside a Composite
request carrying several jobs' calls, goes through `_carry`, the same steps in the same order.

Take a slot of the account's concurrency cap; check the API reserve again (it may have been
reached while waiting); take the token (read only now, so a call queued behind the cap never
carries a token that died meanwhile); let an insert claim its exactly-once marker; send; read
the answer (capped); drop a token Salesforce called dead before the slot is freed; count the
request (metrics, with the job's trace as exemplar), record the org's API usage from
`Sforce-Limit-Info`; classify each call's answer (errors.py). What a request that failed as a
whole means for each call it carried is in failures.py.

Around the one send path, layers, each for one-job-shaped calls:
- shared reads (shared_reads.py): an identical read already in flight is not sent again;
- batching (coalesce.py): a call looks for company; with other calls of its account ready at
  about the same time it travels inside one Composite request (composite.py), otherwise alone;
- merged lookups (merging.py, lookups.py): inside a group, lookups of one shape travel as one
  query with `IN (...)`, whose answer is split back per job (or, when it cannot be split
  provably right, each goes alone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import aiohttp
import orjson

from worker.accounts import Account
from worker.contract import ErrorCode
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.salesforce import composite, merging, overflow
from worker.salesforce.call import Answer, Attempt, Call, Response
from worker.salesforce.coalesce import Coalescer
from worker.salesforce.commit import commit_group
from worker.salesforce.connections import FREE, Connections, NoConnectionFree
from worker.salesforce.errors import Verdict, classify, session_died
from worker.salesforce.failures import (
    CallFailed,
    auth_failed,
    error,
    failure_label,
    lost,
    outcome_unknown,
    timeout_error,
    too_large,
)
from worker.salesforce.http import ResponseTooLarge, SendState, read_capped, untraced
from worker.salesforce.oauth import AuthError
from worker.salesforce.reserve import ApiReserve
from worker.salesforce.shared_reads import SharedReads, own_copy, read_key
from worker.salesforce.tokens import AccessToken, TokenManager
from worker.salesforce.usage import parse_limit_info
from worker.settings import Settings
from worker.stores.slots import Slots
from worker.stores.usage_board import UsageReading

log = logging.getLogger(__name__)

_JSON = "application/json"


class Transport:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenManager,
        settings: Settings,
        metrics: Metrics,
        slots: Slots,
        reserve: ApiReserve,
        connections: Connections,
    ) -> None:
        self._session = session
        self._connections = connections
        self._plain = untraced(session)
        self._tokens = tokens
        self._max_bytes = settings.max_response_bytes
        self._limits_timeout = settings.token_timeout_seconds * 2
        self._metrics = metrics
        self._slots = slots
        self._reserve = reserve
        self._coalescer: Coalescer[Attempt, Answer] = Coalescer(
            settings.coalesce_wait_ms / 1000,
            tracing.composite(self._together),
            metrics,
            adaptive=settings.coalesce_policy == "adaptive",
            max_wait_seconds=settings.coalesce_max_wait_ms / 1000,
            linger_seconds=settings.coalesce_linger_ms / 1000,
            tally=merging.Planner,
        )
        self._reads = SharedReads()

    async def close(self) -> None:
        await self._reads.close()
        await self._coalescer.close()
        await self._plain.close()

    async def send(
        self,
        call: Call,
        method: str,
        url: str,
        params: dict[str, str] | None,
        body: bytes | None,
    ) -> Response:
        """One attempt of a call: its answer (any verdict), or CallFailed, Retryable, or
        SendRefused (the insert's marker is held elsewhere) raised."""
        self._check_reserve(call)
        attempt = Attempt(call, composite.Subrequest(method, url, params, body, call.extra_headers))
        answer = await self._shared(attempt)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _shared(self, attempt: Attempt) -> Answer:
        """Layer: an identical read of the account already in flight is not sent again; this
        call gets its own copy of that answer (shared_reads.py)."""
        call = attempt.call
        key = read_key(call.account, attempt.request) if call.account.share_reads else None
        if key is None:
            return await self._batched(attempt)
        flying = self._reads.flying(key)
        if flying is None:
            task = self._reads.start(key, lambda: self._batched(attempt))
            return await asyncio.shield(task)
        self._reads.join(flying)
        try:
            patience = self._reads.patience(flying, self._coalescer.round_trip(call.account))
            try:
                async with asyncio.timeout_at(min(call.deadline.at, patience)):
                    shared = await asyncio.shield(flying)
            except TimeoutError:
                if call.deadline.expired:
                    raise timeout_error(call) from None
                shared = None  # the shared read is overdue (a hung connection?): go alone
            if not isinstance(shared, Response):  # a failure is the leader's own: go alone
                return await self._batched(attempt)
            # This job's own copy of the answer is memory it holds, as if it had read it.
            raw = self._reads.serialized(flying, shared.body)
            body = await own_copy(call, raw, self._max_bytes)
        finally:
            self._reads.leave(flying)
        self._saved(call.account.name, "shared_read", 1)
        call.attempts += 1
        return self._answer(call, shared.status, body, shared.token)

    async def _batched(self, attempt: Attempt) -> Answer:
        """Layer: look for company (coalesce.py), else go alone."""
        account = attempt.call.account
        if self._coalescer.enabled(account) and composite.supports(account, attempt.request):
            attempt.shapes = merging.shapes(account, attempt)
            answer = await self._join(attempt)
            if answer is not None and not isinstance(answer, overflow.SendAlone):
                return answer  # else: no company, or no room in its group
        return (await self._carry(account, [attempt], attempt.call.deadline.at, alone=True))[0]

    async def _join(self, attempt: Attempt) -> Answer | None:
        """Wait for company (coalesce.py): the answer when the call travelled inside a Composite
        request, or None when it is to go alone."""
        call = attempt.call
        query = composite.is_query(call.account, attempt.request)
        try:
            async with asyncio.timeout_at(call.deadline.at):
                with tracing.active.coalescing() as attempt.trace:
                    return await self._coalescer.join(
                        call.account, attempt, deadline=call.deadline, query=query
                    )
        except TimeoutError:
            attempt.abandoned = True
            if attempt.committed and not call.idempotent:
                raise CallFailed(outcome_unknown("the deadline passed"), None) from None
            raise timeout_error(call) from None
        except asyncio.CancelledError:
            attempt.abandoned = True
            raise

    async def _together(self, account: Account, group: list[Attempt]) -> list[Answer]:
        """The coalescer's sender: the group's calls as subrequests (lookups of one shape merged
        into one query), in one Composite request, or one request when one subrequest is left."""
        units = merging.plan(account, group)
        outgoing = [u.request(account) if u.merged else u.attempts[0] for u in units]
        deadline = max(a.call.deadline.at for a in group)
        alone = len(outgoing) == 1
        answers = await self._carry(account, outgoing, deadline, alone=alone)
        name = account.name
        if not alone:
            self._metrics.composite_requests.labels(name).inc()
            self._metrics.composite_subrequests.labels(name).inc(len(outgoing))
            self._saved(name, "composite", len(outgoing) - 1)
        each: dict[int, Answer] = {}
        fallback: list[Attempt] = []
        for unit, answer in zip(units, answers, strict=True):
            if not unit.merged:
                each[id(unit.attempts[0])] = answer
                continue
            shares = merging.split(unit, answer)
            if shares is None:
                fallback.extend(unit.attempts)
                continue
            self._saved(name, "lookup", len(unit.attempts) - 1)
            assert isinstance(answer, Response)
            for attempt, share in zip(unit.attempts, shares, strict=True):
                attempt.call.attempts += 1
                each[id(attempt)] = self._answer(attempt.call, answer.status, share, answer.token)
        if fallback:  # each alone, as if it had never met the others
            self._metrics.merge_fallbacks.labels(name).inc()
            alone_answers = await asyncio.gather(
                *(self._carry(account, [a], a.call.deadline.at, alone=True) for a in fallback)
            )
            for attempt, (answer,) in zip(fallback, alone_answers, strict=True):
                each[id(attempt)] = answer
        return [each[id(a)] for a in group]

    def _saved(self, account: str, mechanism: str, calls: int) -> None:
        if calls > 0:
            self._metrics.api_calls_saved.labels(account).inc(calls)
            self._metrics.api_calls_saved_by.labels(account, mechanism).inc(calls)

    async def _carry(
        self, account: Account, attempts: list[Attempt], deadline: float, *, alone: bool
    ) -> list[Answer]:
        """One HTTP request carrying `attempts`: one call `alone`, or a Composite request. Each
        attempt's answer, in order: Salesforce's, or what the request's failure means for it."""
        with self._coalescer.flight(account):
            return await self._carry_one(account, attempts, deadline, alone=alone)

    async def _carry_one(
        self, account: Account, attempts: list[Attempt], deadline: float, *, alone: bool
    ) -> list[Answer]:
        label = attempts[0].call.operation.value if alone else "composite"
        # Alone, an insert's marker is marked at the last moment, when the connection is ready
        # (http.py); a Composite request claims its inserts' markers together, before sending.
        state = SendState(attempts[0].call.before_send if alone else None)
        started = 0.0
        connection = self._connections.hold(account)  # the account's own (connections.py)
        try:
            async with asyncio.timeout_at(deadline):
                async with (
                    tracing.active.waiting(self._slots.hold(account), "slot wait"),
                    connection
                    if connection is FREE
                    else tracing.active.waiting(connection, "connection wait"),
                ):
                    going = False
                    for attempt in attempts:  # again: the reserve may be reached meanwhile
                        attempt.unsent = self._reserve_refusal(attempt.call)
                        going = going or attempt.unsent is None
                    if not going:
                        return [a.unsent for a in attempts if a.unsent is not None]
                    token = await self._token(account)
                    sent = attempts if alone else await commit_group(attempts)
                    if not sent:
                        return [a.unsent for a in attempts if a.unsent is not None]
                    for attempt in sent:
                        attempt.call.attempts += 1
                    request = sent[0].request if alone else _composite_request(account, sent)
                    headers = {"Accept": _JSON, **request.headers}
                    if request.body is not None:
                        headers["Content-Type"] = _JSON
                    headers["Authorization"] = token.bearer
                    started = time.perf_counter()
                    async with self._session_for(sent[0].call, alone).request(
                        request.method,
                        request.url,
                        params=request.params,
                        data=request.body,
                        headers=headers,
                        allow_redirects=False,
                        trace_request_ctx=state,
                    ) as response:
                        status = response.status
                        limit_info = response.headers.get("Sforce-Limit-Info")
                        raw = await read_capped(
                            response,
                            self._max_bytes * len(sent),  # alone: one; together: their sum
                            overflow.counted_on(sent),
                        )
                    parsed = decode_body(raw)
                    # Alone, or when a Composite request failed as a whole (401, the daily
                    # limit, 5xx), the request's answer is each call's.
                    each = None if alone or status != 200 else composite.answers(parsed, len(sent))
                    if session_died(status, parsed, each):
                        await self._tokens.invalidate(account, token)
        except AuthError as exc:
            return [a.unsent or auth_failed(a.call, exc) for a in attempts]
        except ResponseTooLarge as exc:
            self._count(account.name, label, "too_large", started)
            if not alone and state.sent:  # each call's answer as far as it was read
                return self._parts(
                    overflow.read_parts(attempts, exc, state, self._max_bytes), token
                )
            return [a.unsent or too_large(a.call, state, exc) for a in attempts]
        except NoConnectionFree as exc:  # none of the account's budget came free in time
            self._metrics.rate_limited.labels(account.name, "connections").inc()
            return [a.unsent or exc.retry for a in attempts]
        except aiohttp.ServerTimeoutError as exc:  # aiohttp's connect timeout: not the deadline
            self._count(account.name, label, "error", started)
            what = f"connecting timed out ({type(exc).__name__})"
            return [a.unsent or lost(a.call, state, what) for a in attempts]
        except TimeoutError:
            if connection.waiting:  # the deadline passed while it waited for a connection
                self._metrics.rate_limited.labels(account.name, "connections").inc()
                return [a.unsent or connection.too_late() for a in attempts]
            self._count(account.name, label, "timeout", started)
            return [a.unsent or lost(a.call, state, "the deadline passed", True) for a in attempts]
        except aiohttp.ClientError as exc:
            self._count(account.name, label, "error", started)
            what = f"connection lost ({type(exc).__name__})"
            return [a.unsent or lost(a.call, state, what) for a in attempts]
        self._count(account.name, label, str(status), started)
        self._record_usage(account, limit_info)
        if not alone and status == 200 and each is None:
            unreadable = "Composite answer unreadable"
            return [a.unsent or lost(a.call, state, unreadable) for a in attempts]
        if each is None:
            return [a.unsent or self._answer(a.call, status, parsed, token) for a in attempts]
        if len(raw) > self._max_bytes:  # a part may be larger than one answer may be alone
            return self._parts(overflow.judged_alone(attempts, each, self._max_bytes), token)
        subanswers = iter(each)  # one for each call sent, in order
        return [a.unsent or self._subanswer(a.call, next(subanswers), token) for a in attempts]

    def _session_for(self, call: Call, alone: bool) -> aiohttp.ClientSession:
        """The session with the hooks (whether the request left; the HTTP spans) when they
        matter: for a Composite request, an insert's lost answer, or a traced job's call."""
        hooked = not alone or call.before_send is not None or not call.idempotent
        return self._session if hooked or tracing.traced_job() else self._plain

    def _check_reserve(self, call: Call) -> None:
        refused = self._reserve_refusal(call)
        if refused is not None:
            raise refused

    def _reserve_refusal(self, call: Call) -> CallFailed | None:
        refusal = self._reserve.refusal(call.account)
        if refusal is None:
            return None
        self._metrics.rate_limited.labels(call.account.name, "reserve").inc()
        return CallFailed(error(ErrorCode.RATE_LIMITED, refusal, True), call.http_status)

    async def _token(self, account: Account) -> AccessToken:
        token = self._tokens.cached(account)
        if token is not None:  # the usual case: no wait
            return token
        with tracing.active.span("token wait"):
            return await self._tokens.get(account)

    def _parts(self, parts: list[overflow.Part], token: AccessToken) -> list[Answer]:
        return [p if isinstance(p, Exception) else self._subanswer(*p, token) for p in parts]

    def _subanswer(self, call: Call, sub: composite.SubAnswer, token: AccessToken) -> Response:
        return self._answer(call, sub.status, sub.body, token)

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
            self._reserve.observe(account, reading)  # and the usage gauges

    async def read_limits(self, account: Account) -> UsageReading | None:
        """The org's daily API usage from `/limits` (None when it cannot be read now). The
        reserve's probe: it goes outside `_carry`, whose reserve check would refuse it exactly
        when the reserve needs it, and outside any job's deadline."""
        url = f"{account.api_base}/limits"
        for _ in range(2):
            started = 0.0  # set when the request leaves: a token that failed is no request
            try:
                async with asyncio.timeout(self._limits_timeout):
                    token = await self._tokens.get(account)
                    started = time.perf_counter()
                    async with self._session.get(
                        url,
                        headers={"Authorization": token.bearer, "Accept": _JSON},
                        allow_redirects=False,
                    ) as response:
                        raw = await read_capped(response, self._max_bytes)
                        status = response.status
                        header = response.headers.get("Sforce-Limit-Info")
            except (TimeoutError, aiohttp.ClientError, AuthError, ResponseTooLarge) as exc:
                if started:  # counted and timed as a request of a job's call would be
                    self._count(account.name, "limits", failure_label(exc), started)
                log.info(
                    "reading /limits failed",
                    extra={"account": account.name, "error": type(exc).__name__},
                )
                return None
            self._count(account.name, "limits", str(status), started)
            if status == 401:
                await self._tokens.invalidate(account, token)
                continue
            body = decode_body(raw)
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


def _composite_request(account: Account, sent: list[Attempt]) -> composite.Subrequest:
    body = composite.request_body(account, [a.request for a in sent])
    return composite.Subrequest("POST", f"{account.api_base}/composite", body=body)


def decode_body(raw: bytes) -> Any:
    """A response body: its JSON, or (not JSON) the start of its text; None when empty."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:2000].decode("utf-8", errors="replace")
