"""One block job decided, top to bottom: check it (size, JSON, schema, a forged `x-death`), the
reply rule, admission (tenant, account, key, fingerprint) and the parameters' binding; then at
most once (the job-id binding, replay, reuse, the in-process join, the insert guard); then the
call to Salesforce. What comes out is a `Decision`: reply with this answer, dead-letter (with or
without a copy), or requeue. The consumer (worker/runtime/consumer.py) settles it: nothing
here knows RabbitMQ."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum

from worker.accounts import Accounts
from worker.contract import AnyJob, BlockResult, ErrorCode, Operation
from worker.jobs.admission import Admission, Gate
from worker.jobs.answers import ResultBody, failed, finish
from worker.jobs.execute import Execution
from worker.jobs.intake import (
    FORGED_DEATH,
    Incoming,
    Request,
    bind,
    forged_death,
    log_history,
    read_request,
    refuse_forged,
)
from worker.jobs.once import AtMostOnce, InsertGuard
from worker.memory import Hold
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.salesforce.client import SalesforceClient
from worker.settings import Settings
from worker.stores.results import ResultStore
from worker.tenancy import Reason, WorkerQueues

log = logging.getLogger(__name__)


class Settle(Enum):
    REPLY = "reply"  # publish the answer (confirmed), then ack
    DEAD_LETTER = "dead_letter"  # reject: RabbitMQ dead-letters it
    DEAD_LETTER_COPY = "dead_letter_copy"  # the worker copies it to the dead letters, then acks
    REQUEUE = "requeue"  # nack with requeue: the delivery limit ends a poison message


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a delivery."""

    settle: Settle
    job_id: str
    answer: ResultBody | None = None
    reason: str = ""  # why it is dead-lettered (the dead-letter reason header and metric)


@dataclass(frozen=True, slots=True)
class Checked:
    """A delivery after the checks that need no store and no Salesforce: its job and
    admission, or why it is refused (`forbidden_reply`: not even answered)."""

    job_id: str
    job: AnyJob | None
    admission: Admission | None = None
    refusal: BlockResult | None = None
    reason: str = ""
    forbidden_reply: bool = False

    @property
    def account(self) -> str | None:
        """The account the job will run on; None for anything refused or without one."""
        admission = self.admission
        if self.refusal is not None or admission is None or admission.account is None:
            return None
        return admission.account.name


class JobPipeline:
    def __init__(
        self,
        accounts: Accounts,
        client: SalesforceClient,
        store: ResultStore,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        queues = WorkerQueues.of(settings.request_queue, settings.dead_letter_queue)
        self._gate = Gate(accounts, metrics, queues)
        self._once = AtMostOnce(store, settings.max_result_bytes, metrics, self.observe)
        self.execution = Execution(client, InsertGuard(store), metrics)

    def check(self, incoming: Incoming) -> Checked:
        """Read the request, apply the reply rule, admit the job and check its parameters.
        Each refusal is counted and logged here, once (the lanes check before they route)."""
        request = read_request(incoming, self._settings.max_message_bytes)
        if forged_death(incoming.headers):
            request = refuse_forged(request)
        job_id = request.job_id
        if not self._gate.may_reply(job_id, incoming):
            return Checked(job_id, request.job, forbidden_reply=True)
        if request.job is None:
            self._invalid(request)
            return Checked(job_id, None, refusal=request.refusal, reason=request.reason)
        admission = self._gate.admit(request.job, incoming)
        if admission.refusal is not None:
            return Checked(
                job_id, request.job, admission, admission.refusal, reason=admission.reason
            )
        account = admission.account
        if account is not None:
            statement, problem = bind(admission.job, account)
            if statement is not None:
                admission = dataclasses.replace(admission, statement=statement)
            if problem is not None:
                refusal = failed(
                    job_id,
                    ErrorCode.INVALID_REQUEST,
                    problem,
                    operation=Operation(admission.job.operation),
                    account=account.name,
                )
                return Checked(job_id, request.job, admission, refusal, reason="binding")
        return Checked(job_id, request.job, admission)

    async def handle(
        self, incoming: Incoming, checked: Checked | None = None, hold: Hold | None = None
    ) -> Decision:
        """The decision for one delivery; never raises but for cancellation (an unexpected
        error requeues it, and the queue's delivery limit dead-letters a poison message).
        `hold`: the job's share of the memory budget, if it runs (memory.py)."""
        try:
            return await self._decide(incoming, checked or self.check(incoming), hold)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._metrics.handler_crashes.inc()
            log.exception("unexpected error while handling a delivery; requeued")
            job_id = checked.job_id if checked is not None else (incoming.message_id or "")
            return Decision(Settle.REQUEUE, job_id)

    async def _decide(self, incoming: Incoming, checked: Checked, hold: Hold | None) -> Decision:
        job_id = checked.job_id
        if incoming.redelivered:
            self._metrics.redeliveries.inc()
        if incoming.redelivered or incoming.headers:
            log_history(incoming, job_id)
        if checked.forbidden_reply:
            return self._dead_letter(job_id, Reason.FORBIDDEN_REPLY_TO.value, copy=True)
        if checked.job is not None:
            tracing.active.job_started(checked.job)
        if checked.refusal is not None:
            return self._refuse(incoming, checked.refusal, checked.reason)
        admission = checked.admission
        assert admission is not None

        async def run() -> BlockResult:
            return await self.execution.run(admission, incoming, hold)

        answer = await self._once.answer(admission, incoming, run)
        return Decision(Settle.REPLY, job_id, answer)

    def _refuse(self, incoming: Incoming, refusal: BlockResult, reason: str) -> Decision:
        """ResultBody a job refused before execution, or dead-letter it when it has no reply_to
        (nobody to tell: it is kept for a human). A forged `x-death` is copied, since RabbitMQ
        cannot dead-letter it."""
        if not incoming.reply_to and reason != "binding":
            return self._dead_letter(refusal.job_id, reason, copy=reason == FORGED_DEATH)
        result = finish(refusal, incoming)
        self.observe(result)
        return Decision(Settle.REPLY, refusal.job_id, ResultBody.from_result(result))

    def _dead_letter(self, job_id: str, reason: str, *, copy: bool) -> Decision:
        self._metrics.dead_lettered.labels(reason).inc()
        return Decision(
            Settle.DEAD_LETTER_COPY if copy else Settle.DEAD_LETTER, job_id, None, reason
        )

    def observe(self, result: BlockResult) -> None:
        """A job answered: its metrics, its trace and its log line."""
        operation = result.operation.value if result.operation else ""
        code = result.error.code.value if result.error else ""
        self._metrics.jobs.labels(operation, result.status.value, code).inc()
        self._metrics.job_duration.labels(operation, result.status.value).observe(
            result.duration_ms / 1000, tracing.exemplar()
        )
        tracing.active.job_done(result)
        log.info(
            "job answered",
            extra={
                "job_id": result.job_id,
                "operation": operation,
                "account": result.account or "",
                "status": result.status.value,
                "code": code,
                "http_status": result.http_status,
                "attempts": result.attempts,
                "duration_ms": result.duration_ms,
            },
        )

    def _invalid(self, request: Request) -> None:
        self._metrics.invalid_requests.labels(request.reason).inc()
        assert request.refusal is not None
        log.warning(
            "invalid request",
            extra={
                "job_id": request.job_id,
                "reason": request.reason,
                "error": request.refusal.error.message if request.refusal.error else "",
            },
        )
