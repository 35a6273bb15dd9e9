"""The retry policy of one call: send until the answer is final. A dead session is refreshed
once per operation; a retryable answer or a lost connection is tried again after a full-jitter
backoff, as long as attempts are left and the pause ends before the job's deadline; anything
else ends the operation (CallFailed)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson

from worker.contract import ResultError
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.salesforce.call import Call, Response
from worker.salesforce.errors import Verdict
from worker.salesforce.failures import CallFailed, Retryable
from worker.salesforce.transport import Transport
from worker.settings import Settings

_DEADLINE_MARGIN = 0.005


class RetryPolicy:
    def __init__(self, transport: Transport, settings: Settings, metrics: Metrics) -> None:
        self._transport = transport
        self._settings = settings
        self._metrics = metrics

    async def request(
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
            try:
                response = await self._transport.send(call, method, url, params, body)
            except Retryable as retry:
                await self._pause(call, retry.reason, retry.error)
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
                await self._pause(call, classified.retry_reason, classified.to_error())
                continue
            raise CallFailed(classified.to_error(), response.status)

    async def _pause(self, call: Call, reason: str, error: ResultError) -> None:
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
