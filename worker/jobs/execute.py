"""A job run against Salesforce: its deadline, its account, the call (an insert through the
insert guard), and the outcome as the job's result."""

from __future__ import annotations

import asyncio

from worker.contract import BlockResult, ErrorCode, InsertJob, Operation
from worker.deadline import Deadline
from worker.jobs.admission import Admission
from worker.jobs.answers import failed
from worker.jobs.intake import Incoming
from worker.jobs.once import BeforeSend, InsertGuard
from worker.memory import ALLOWANCE, BODY_FACTOR, Hold, OverBudget
from worker.observability import tracing
from worker.observability.metrics import Metrics
from worker.salesforce.binding import BindingError
from worker.salesforce.client import SalesforceClient


class Execution:
    """Runs admitted jobs: deadline, account, Salesforce; returns the result to publish."""

    def __init__(self, client: SalesforceClient, guard: InsertGuard, metrics: Metrics) -> None:
        self._client = client
        self._guard = guard
        self._metrics = metrics

    def deadline(self, admission: Admission, incoming: Incoming) -> Deadline:
        """The budget counts from sent_at, else the AMQP timestamp, else receipt. An AMQP
        timestamp has whole-second resolution: the budget then counts from the end of that
        second (or receipt, if earlier), so rounding never cuts a short budget."""
        job = admission.job
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

    async def run(
        self, admission: Admission, incoming: Incoming, hold: Hold | None = None
    ) -> BlockResult:
        job = admission.job
        operation = Operation(job.operation)
        deadline = self.deadline(admission, incoming)
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
        account = admission.account
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

        if hold is not None:
            refused = await self._room(admission, incoming, hold, deadline)
            if refused is not None:
                return refused

        async def call(before_send: BeforeSend | None = None) -> BlockResult:
            assert account is not None
            try:
                outcome = await self._client.execute(
                    job,
                    account,
                    deadline,
                    before_send=before_send,
                    memory=hold,
                    statement=admission.statement,
                )
            except BindingError as exc:  # intake checked the binding: a safety net
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

        if isinstance(job, InsertJob) and job.sobject not in account.idempotency_fields:
            return await self._guard.send(admission, deadline, incoming.redelivered, call)
        return await call()

    async def _room(
        self, admission: Admission, incoming: Incoming, hold: Hold, deadline: Deadline
    ) -> BlockResult | None:
        """Wait for the job's room in the memory budget (its body, and a small answer's), at
        most until its deadline: None once it has it, else the job's answer."""
        job = admission.job
        operation = Operation(job.operation)
        account = admission.account.name if admission.account else job.account
        try:
            async with asyncio.timeout_at(deadline.at):
                await hold.take(len(incoming.body) * BODY_FACTOR + ALLOWANCE)
        except TimeoutError:
            return failed(
                job.job_id,
                ErrorCode.TIMEOUT,
                "the job's deadline passed while it waited for room in the worker's memory "
                "budget (SFWORKER_MEMORY_BUDGET_BYTES); Salesforce was not called",
                operation=operation,
                account=account,
                retryable=True,
            )
        except OverBudget as exc:
            self._metrics.memory_budget_refused.inc()
            return failed(
                job.job_id,
                ErrorCode.RESULT_TOO_LARGE,
                f"{exc}; Salesforce was not called",
                operation=operation,
                account=account,
            )
        return None
