"""Who sent a job and where its answer may go (worker/tenancy.py's rules, with the counting and
logging of every refusal): the reply rule, then admission: the tenant, the account resolved once,
the job's key in the result store and its fingerprint."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.accounts import Account, Accounts
from worker.contract import AnyJob, BlockResult, ErrorCode, Operation
from worker.contract.fingerprint import fingerprint
from worker.jobs.answers import failed
from worker.jobs.intake import Incoming
from worker.observability.metrics import Metrics
from worker.tenancy import NO_WORKER_QUEUES, Reason, WorkerQueues, check, reply_allowed, store_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admission:
    """A valid job after the tenancy check: the job to run (its tenant the publisher's), its
    account (None: answered UNKNOWN_ACCOUNT), the key of its result in the store and the
    fingerprint that binds the key to this job; or the refusal to answer, and why."""

    job: AnyJob
    key: str
    account: Account | None = None
    fingerprint: bytes = b""  # worker/contract/fingerprint.py
    refusal: BlockResult | None = None
    reason: str = ""
    tenant: str = ""  # the publisher's tenant, for the refusal's log line
    statement: str | None = None  # a search's SOQL/SOSL with its parameters bound (intake)


def admit(accounts: Accounts, job: AnyJob, user_id: str | None) -> Admission:
    """The tenancy check and the account, before the result store or Salesforce are touched
    (pure: the pipeline counts and logs a refusal)."""
    verdict = check(accounts, user_id, job.account, job.tenant)
    if verdict.refused is None:
        if verdict.tenant != job.tenant:
            job = job.model_copy(update={"tenant": verdict.tenant})
        account = accounts.resolve(job.account, verdict.tenant)
        key = store_key(accounts, verdict.tenant, job.job_id, account)
        # A job whose account does not resolve (answered UNKNOWN_ACCOUNT) is kept apart
        # from every scoped key, which starts with 16 hex digits.
        return Admission(
            job,
            key if account is not None else f"none/{key}",
            account,
            fingerprint(job, account.name if account else job.account),
        )
    refusal = failed(
        job.job_id,
        ErrorCode.FORBIDDEN_ACCOUNT,
        verdict.message,
        operation=Operation(job.operation),
        account=job.account,
    )
    return Admission(
        job,
        job.job_id,
        refusal=refusal,
        reason=verdict.refused.value,
        tenant=verdict.tenant or "",
    )


class Gate:
    """The reply rule and admission, each refusal counted and logged."""

    def __init__(
        self, accounts: Accounts, metrics: Metrics, worker_queues: WorkerQueues = NO_WORKER_QUEUES
    ) -> None:
        self._accounts = accounts
        self._metrics = metrics
        self._worker_queues = worker_queues

    def may_reply(self, job_id: str, incoming: Incoming) -> bool:
        """Where its result would go: in strict mode only to a queue its publisher may read.
        Checked before anything else, refusals included, since even a refusal would put a
        message of the publisher's making (its correlation id) into that queue."""
        if reply_allowed(self._accounts, incoming.user_id, incoming.reply_to, self._worker_queues):
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

    def admit(self, job: AnyJob, incoming: Incoming) -> Admission:
        admission = admit(self._accounts, job, incoming.user_id)
        if admission.refusal is None:
            return admission
        tenant = admission.tenant
        self._metrics.tenant_refusals.labels(admission.reason, tenant).inc()
        log.warning(
            "job refused: not this publisher's tenant or account",
            extra={
                "job_id": job.job_id,
                "reason": admission.reason,
                "user_id": incoming.user_id or "",
                "tenant": tenant,
                "account": job.account or "",
                "job_tenant": job.tenant or "",
            },
        )
        return admission
