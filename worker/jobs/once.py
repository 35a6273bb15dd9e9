"""At most once: a job id is bound to one job, a job's result is stored before it is published
and answers every redelivery, a job already running in this process is joined rather than run
again, and an insert is never sent twice (the insert marker written before it is sent).

Two records in the result store (worker/stores/results.py) carry this:
- the **job-id binding**: the job's key bound to its fingerprint at its first delivery (a later
  job under the same id that differs is JOB_ID_REUSED) with the stored result, if any;
- the **insert marker**: written just before an insert leaves (by the worker that sends it), so
  a redelivery of it, here or on another worker, is answered with the first one's result or
  OUTCOME_UNKNOWN, never sent again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

from worker.contract import BlockResult, ErrorCode, Operation
from worker.contract.fingerprint import differences
from worker.deadline import Deadline
from worker.jobs.admission import Admission
from worker.jobs.answers import ResultBody, failed, finish, result_too_large
from worker.jobs.intake import Incoming
from worker.observability.metrics import Metrics
from worker.salesforce.http import SendRefused
from worker.stores.results import ResultStore, pack_result, unpack_result

log = logging.getLogger(__name__)
_SENDER_POLL = 0.1

Run = Callable[[], Awaitable[BlockResult]]
Observe = Callable[[BlockResult], None]
BeforeSend = Callable[[], Awaitable[bool]]


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


class AtMostOnce:
    """The job-id binding, the replay of a stored result, the in-process join, the result's
    size cap and its store; `InsertGuard` below keeps inserts to one send."""

    def __init__(
        self, store: ResultStore, max_result_bytes: int, metrics: Metrics, observe: Observe
    ) -> None:
        self._store = store
        self._max_result_bytes = max_result_bytes
        self._metrics = metrics
        self._observe = observe
        self._running: dict[str, tuple[bytes, asyncio.Future[ResultBody]]] = {}

    async def answer(self, admission: Admission, incoming: Incoming, run: Run) -> ResultBody:
        held, stored = await self._store.bind(admission.key, admission.fingerprint)
        if held is not None and held != admission.fingerprint:
            return self._reused(admission, held, incoming)
        if stored is not None:
            return self._replay(admission, stored, incoming)
        return await self._run_once(admission, incoming, run)

    def _replay(self, admission: Admission, stored: bytes, incoming: Incoming) -> ResultBody:
        """The stored result of this job (of another job: JOB_ID_REUSED)."""
        first, body = unpack_result(stored)
        if first != admission.fingerprint:
            return self._reused(admission, first, incoming)
        self._metrics.results_replayed.inc()
        log.info(
            "answering a redelivered job from the result store",
            extra={"job_id": admission.job.job_id},
        )
        return ResultBody.of(body)

    def _reused(self, admission: Admission, first: bytes, incoming: Incoming) -> ResultBody:
        """JOB_ID_REUSED: counted and logged (the parts that differ, never values); nothing is
        stored, so the first job's result stays as it was."""
        result = finish(reused(admission, first), incoming)
        self._metrics.job_id_reused.inc()
        log.warning(
            "job id reused for another job; refused",
            extra={
                "job_id": admission.job.job_id,
                "differs": ",".join(differences(first, admission.fingerprint)),
            },
        )
        self._observe(result)
        return ResultBody.from_result(result)

    async def _run_once(self, admission: Admission, incoming: Incoming, run: Run) -> ResultBody:
        """Run the job, or join the run already going on in this process for the same job
        (same job_id, and in strict tenant mode the same tenant)."""
        key = admission.key
        running = self._running.get(key)
        if running is not None:
            first, joined = running
            if first != admission.fingerprint:
                return self._reused(admission, first, incoming)
            log.info(
                "job already running here; waiting for its result",
                extra={"job_id": admission.job.job_id},
            )
            return await asyncio.shield(joined)
        future: asyncio.Future[ResultBody] = asyncio.get_running_loop().create_future()
        self._running[key] = (admission.fingerprint, future)
        self._metrics.jobs_in_flight.inc()
        try:
            result = finish(await run(), incoming)
            answer = ResultBody.from_result(result)
            if len(answer.body) > self._max_result_bytes:
                result = result_too_large(result, len(answer.body), self._max_result_bytes)
                answer = ResultBody.from_result(result)
            await self._store.put(key, pack_result(admission.fingerprint, answer.body))
            self._observe(result)
            future.set_result(answer)
            return answer
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: joiners see it, nobody else has to
            raise
        finally:
            self._metrics.jobs_in_flight.dec()
            del self._running[key]


class InsertGuard:
    """An insert is sent at most once across the fleet: an earlier delivery that may have
    reached Salesforce is not sent again; its answer, when known, is this one's."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    async def send(
        self,
        admission: Admission,
        deadline: Deadline,
        redelivered: bool,
        send: Callable[[BeforeSend], Awaitable[BlockResult]],
    ) -> BlockResult:
        """`send(before_send)` runs the insert; `before_send` writes the insert marker just
        before the request leaves and refuses (SendRefused) when another delivery wrote it."""
        key = admission.key
        sender = await self._store.insert_sender(key)
        if sender is None and redelivered and self._store.blind():
            # A marker that cannot be read is no proof that none was written: an earlier
            # delivery may have sent it from another worker.
            return self._unknown(
                admission,
                "this insert was delivered before and the fleet's record of what was sent "
                "(Redis) is out of reach; Salesforce may or may not have created the record "
                "from the earlier delivery, so it is not sent again",
            )
        if sender is not None:
            earlier = await self._result_of_sender(key, sender, deadline)
            if earlier is not None:
                return earlier
            return self._unknown(
                admission,
                "an earlier delivery of this insert was sent to Salesforce and its worker "
                "stopped before answering; Salesforce may or may not have created the "
                "record, so it is not sent again",
            )
        try:
            return await send(functools.partial(self._store.mark_insert_sent, key))
        except SendRefused:
            # The same insert, delivered twice, runs in another worker that marked it first:
            # its answer is this one's.
            sender = await self._store.insert_sender(key)
            earlier = await self._result_of_sender(key, sender, deadline) if sender else None
            if earlier is not None:
                return earlier
            return self._unknown(
                admission,
                "another delivery of this insert was being sent by another worker, whose "
                "answer did not come in time; Salesforce may or may not have created the "
                "record, so it is not sent again",
            )

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

    @staticmethod
    def _unknown(admission: Admission, message: str) -> BlockResult:
        job = admission.job
        return failed(
            job.job_id,
            ErrorCode.OUTCOME_UNKNOWN,
            message,
            operation=Operation(job.operation),
            account=admission.account.name if admission.account else job.account,
        )
