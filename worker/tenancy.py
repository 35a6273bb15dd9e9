"""Who may use which account: the tenant of a job is the one its RabbitMQ publisher works for.

RabbitMQ vouches for the `user_id` property of a message (it refuses a message whose `user_id`
differs from the user the publishing connection authenticated as), so with `[tenants.NAME]`
tables in the accounts file (strict mode) a job's tenant is the tenant whose `amqp_users` list
its `user_id`. A job without `user_id`, from a user no tenant lists, claiming another tenant, or
naming another tenant's account is refused. Without tenant tables the job's own `tenant` field
is all there is (open mode: anyone who can publish may use any account).

In strict mode replies go only where the publisher may read (`reply_allowed`): the worker's
broker user may write to `amq.default`, which reaches every queue of the vhost, so a `reply_to`
naming another tenant's queue would let one tenant inject results into another's call flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from worker.accounts import Account, Accounts


class Reason(StrEnum):
    """Why a job was refused; the `reason` label of sfworker_tenant_refusals_total."""

    NO_USER_ID = "no_user_id"
    UNKNOWN_USER = "unknown_user"
    TENANT_MISMATCH = "tenant_mismatch"
    FOREIGN_ACCOUNT = "foreign_account"
    FORBIDDEN_REPLY_TO = "forbidden_reply_to"


@dataclass(frozen=True)
class TenantCheck:
    """The tenant a job runs for (None: none, in open mode), or why it may not run."""

    tenant: str | None
    refused: Reason | None = None
    message: str = ""


def check(
    accounts: Accounts, user_id: str | None, account: str | None, tenant: str | None
) -> TenantCheck:
    """May a job published by `user_id`, naming `account` and claiming `tenant`, run?

    In strict mode the verdict's tenant is the publisher's: a job naming no account then gets
    that tenant's default. An account that does not exist is not refused here: resolving it
    answers UNKNOWN_ACCOUNT as in open mode."""
    if not accounts.strict:
        return TenantCheck(tenant)
    if not user_id:
        return TenantCheck(
            None,
            Reason.NO_USER_ID,
            "the message has no user_id: jobs must be published with the user_id property set "
            "to the RabbitMQ user of the publishing connection",
        )
    owner = accounts.tenant_of_user(user_id)
    if owner is None:
        return TenantCheck(
            None, Reason.UNKNOWN_USER, f"RabbitMQ user {user_id!r} publishes for no tenant"
        )
    if tenant is not None and tenant != owner.name:
        return TenantCheck(
            owner.name,
            Reason.TENANT_MISMATCH,
            f"the job claims tenant {tenant!r} but {user_id!r} publishes for tenant {owner.name!r}",
        )
    named = accounts.by_name.get(account) if account is not None else None
    if named is not None and named.tenant != owner.name:
        return TenantCheck(
            owner.name,
            Reason.FOREIGN_ACCOUNT,
            f"account {named.name!r} does not belong to tenant {owner.name!r}",
        )
    return TenantCheck(owner.name)


def store_key(
    accounts: Accounts, tenant: str | None, job_id: str, account: Account | None = None
) -> str:
    """The key of a job's result in the result store. In strict mode job ids are per tenant:
    one tenant reusing another's job_id gets its own job run, never the other's result.
    (A tenant name never holds '/'.) With the job's account, the key starts with its
    `Account.scope` (the org, app and user): two deployments sharing a Redis never answer each
    other's job ids."""
    key = f"{tenant}/{job_id}" if accounts.strict else job_id
    if account is None:
        return key
    return f"{account.scope}/{key}"


# Reply queues any publisher may name: server-named queues (random names, exclusive to the
# connection that declared them) and RabbitMQ direct reply-to (bound to the caller's channel).
SERVER_NAMED = "amq.gen-"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


@dataclass(frozen=True)
class WorkerQueues:
    """The queues of the worker's own topology: the request queue, everything named under it
    (its lanes, the dead-letter queue by default) and the dead-letter queue."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, request_queue: str, dead_letter_queue: str) -> WorkerQueues:
        return cls(frozenset({request_queue, dead_letter_queue}), (f"{request_queue}.",))

    def __contains__(self, queue: object) -> bool:
        return isinstance(queue, str) and (queue in self.names or queue.startswith(self.prefixes))


NO_WORKER_QUEUES = WorkerQueues()


def reply_allowed(
    accounts: Accounts,
    user_id: str | None,
    reply_to: str | None,
    worker_queues: WorkerQueues = WorkerQueues(),
) -> bool:
    """May a job published by `user_id` have its result sent to `reply_to`?

    Open mode: anywhere. Strict mode: never a queue of the worker's own (`worker_queues`),
    whatever the user's name (a user named like the topology's prefix gets no way into a lane
    or the dead letters); else a queue named `<user_id>.<anything>` (the deploy recipe lets that
    user read exactly those), a server-named `amq.gen-...` queue, direct reply-to, or a queue
    whose whole name matches one of the `reply_to` patterns of the user's tenant.
    No reply_to at all (the result goes to the results exchange) is always allowed."""
    if not accounts.strict or not reply_to:
        return True
    if reply_to.startswith((SERVER_NAMED, DIRECT_REPLY_TO)):
        return True
    if not user_id or reply_to in worker_queues:
        return False
    if reply_to.startswith(f"{user_id}.") and len(reply_to) > len(user_id) + 1:
        return True
    owner = accounts.tenant_of_user(user_id)
    return owner is not None and any(p.fullmatch(reply_to) for p in owner.reply_to)
