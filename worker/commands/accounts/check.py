"""`sfworker accounts check [NAME] [--objects Contact,Case] [--json]`: does an account work?

For each account: get a token with its real flow, then ask the org who the token belongs to
(identity URL), the daily API usage (/limits) and, with --objects, whether the integration user
may query, create, update and delete each object (describe), naming the blocks that will fail.
Exit 0 only when every checked account got a token and its limits. No secret or token is ever
printed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import SecretStr

from worker.accounts import Account, Accounts, ConfigError, Flow
from worker.commands.accounts.hints import auth_hint
from worker.commands.accounts.org import (
    ApiUsage,
    Identity,
    ObjectAccess,
    OrgError,
    api_usage,
    identity,
    object_access,
)
from worker.commands.render import table
from worker.contract import ErrorCode
from worker.observability.metrics import Metrics
from worker.runtime.reach import endpoint
from worker.salesforce.http import create_session
from worker.salesforce.oauth import AuthError, Grant, request_token
from worker.salesforce.tokens import BoardTokenManager
from worker.settings import Settings
from worker.stores.link import RedisLink, from_settings
from worker.stores.redis_token_board import RedisTokenBoards
from worker.stores.token_board import BoardUnavailable

CONCURRENT_ACCOUNTS = 4

# Which permission each block needs (describe flags).
BLOCKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Search", ("queryable",)),
    ("Get", ("queryable",)),
    ("Insert", ("createable",)),
    ("Update", ("updateable",)),
    ("Upsert", ("createable", "updateable")),
    ("Delete", ("deletable",)),
)


@dataclass
class AccountReport:
    account: Account
    status: str = "OK"  # OK, AUTH_FAILED, UNREACHABLE, ORG_ERROR
    error: str = ""
    error_description: str = ""
    hint: str = ""
    identity: Identity | None = None
    usage: ApiUsage | None = None
    objects: list[ObjectAccess] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "OK" and self.usage is not None


def failing_blocks(access: ObjectAccess) -> list[str]:
    if not access.visible:
        return [name for name, _ in BLOCKS]
    return [name for name, needs in BLOCKS if not all(getattr(access, f) for f in needs)]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def verdict(access: ObjectAccess) -> str:
    failing = failing_blocks(access)
    if not access.visible:
        return f"not visible to the user: every block on {access.name} will fail"
    if not failing:
        return "every block works"
    missing = [
        word
        for word, flag in (
            ("query", "queryable"),
            ("create", "createable"),
            ("edit", "updateable"),
            ("delete", "deletable"),
        )
        if not getattr(access, flag)
    ]
    reason = (
        "read only"
        if missing == ["create", "edit", "delete"]
        else f"no {_join(missing)} permission"
    )
    return f"{reason}: {_join(failing)} blocks on {access.name} will fail"


async def _token(
    session: aiohttp.ClientSession,
    account: Account,
    within: float,
    fleet: RedisLink | None,
    refresh_ttl: float,
) -> Grant:
    if fleet is not None and account.flow is Flow.REFRESH_TOKEN:
        return await _fleet_token(session, account, within, fleet, refresh_ttl)
    async with asyncio.timeout(within):
        return await request_token(session, account, refresh_token=account.refresh_token)


async def _fleet_token(
    session: aiohttp.ClientSession,
    account: Account,
    within: float,
    fleet: RedisLink,
    refresh_ttl: float,
) -> Grant:
    """A refresh-token account of a fleet: refresh under the fleet's lock with its newest refresh
    token, and store a rotated one for the workers (never spend theirs)."""
    grants: list[Grant] = []

    async def fetch(account: Account, refresh_token: SecretStr | None) -> Grant:
        grants.append(await request_token(session, account, refresh_token=refresh_token))
        return grants[-1]

    boards = RedisTokenBoards(fleet, refresh_ttl=refresh_ttl)
    tokens = BoardTokenManager(fetch, Metrics(), shared=boards, request_timeout=within)
    try:
        await tokens.state(account).refresh_now()
    except BoardUnavailable:
        raise AuthError(
            f"Redis ({fleet.where}) does not answer: the fleet's refresh token is there, and "
            "refreshing with the accounts file's one could revoke it; check Redis first",
            code=ErrorCode.SALESFORCE_UNAVAILABLE,
        ) from None
    return grants[-1]


async def check_account(
    session: aiohttp.ClientSession,
    account: Account,
    objects: list[str],
    within: float,
    fleet: RedisLink | None = None,
    refresh_ttl: float = 30 * 86400.0,
) -> AccountReport:
    report = AccountReport(account)
    try:
        grant = await _token(session, account, within, fleet, refresh_ttl)
    except TimeoutError:
        report.status = "UNREACHABLE"
        report.hint = (
            f"no answer from {endpoint(account.token_url)} within {within:g} s: check "
            "instance_url / token_url and the network"
        )
        return report
    except AuthError as exc:
        if exc.code is ErrorCode.SALESFORCE_UNAVAILABLE:
            report.status = "UNREACHABLE"
            report.error = exc.error
            report.hint = (
                f"cannot use {endpoint(account.token_url)} ({exc.message}): check instance_url "
                "/ token_url, the network, and status.salesforce.com"
            )
        else:
            report.status = "AUTH_FAILED"
            report.error, report.error_description = exc.error, exc.description
            report.hint = auth_hint(account, exc.error, exc.description)
        return report
    if grant.refresh_token is not None and fleet is None:
        report.warnings.append(
            "Salesforce rotated the refresh token: the one in the accounts file is spent now; "
            f"run `sfworker accounts authorize {account.name}` before the workers need it"
        )
    if (
        grant.instance_url
        and urlsplit(grant.instance_url).hostname != urlsplit(account.instance_url).hostname
    ):
        report.warnings.append(
            f"the token's instance_url is {grant.instance_url}, the accounts file says "
            f"{account.instance_url}: use the org's My Domain URL"
        )
    try:
        report.identity = await identity(session, account, grant, within)
        report.usage = await api_usage(session, account, grant, within)
        for name in objects:
            report.objects.append(await object_access(session, account, grant, name, within))
    except OrgError as exc:
        report.status = "ORG_ERROR"
        report.error_description = str(exc)
    return report


async def check_accounts(
    settings: Settings, accounts: list[Account], objects: list[str]
) -> list[AccountReport]:
    within = settings.token_timeout_seconds
    limit = asyncio.Semaphore(CONCURRENT_ACCOUNTS)
    fleet = None
    if settings.redis_url is not None:
        fleet = from_settings(settings, Metrics())  # before anything opens: ConfigError
        await fleet.start()
    session = create_session(settings)

    async def one(account: Account) -> AccountReport:
        async with limit:
            return await check_account(
                session, account, objects, within, fleet, settings.refresh_token_ttl_days * 86400
            )

    try:
        return list(await asyncio.gather(*(one(a) for a in accounts)))
    finally:
        await session.close()
        if fleet is not None:
            await fleet.close()


def select(accounts: Accounts, name: str | None) -> list[Account]:
    if name is None:
        return list(accounts.by_name.values())
    account = accounts.by_name.get(name)
    if account is None:
        known = ", ".join(sorted(accounts.by_name))
        raise ConfigError(f"no account named {name!r} in the accounts file (known: {known})")
    return [account]


def render(reports: list[AccountReport]) -> str:
    rows = []
    for r in reports:
        user = f"{r.identity.username} ({r.identity.user_id})" if r.identity else ""
        rows.append(
            [
                r.account.name,
                r.account.flow.value,
                user,
                r.identity.org_id if r.identity else "",
                str(r.usage) if r.usage else "",
                r.status,
            ]
        )
    out = [table(rows, ["account", "flow", "user", "org", "daily API usage", "status"])]
    for r in reports:
        if r.status != "OK":
            detail = f"{r.error}: {r.error_description}" if r.error_description else r.error
            out.append(f"\n{r.account.name}: {r.status}" + (f" {detail}" if detail else ""))
            if r.hint:
                out.append(f"  hint: {r.hint}")
        for warning in r.warnings:
            out.append(f"\n{r.account.name}: warning: {warning}")
    object_rows = [
        [
            r.account.name,
            o.name,
            *("yes" if getattr(o, f) else "no" for f in ("queryable", "createable")),
            *("yes" if getattr(o, f) else "no" for f in ("updateable", "deletable")),
        ]
        for r in reports
        for o in r.objects
    ]
    if object_rows:
        out.append("")
        out.append(table(object_rows, ["account", "object", "query", "create", "update", "delete"]))
        for r in reports:
            for o in r.objects:
                out.append(f"{r.account.name} {o.name}: {verdict(o)}")
    return "\n".join(out)


def as_json(reports: list[AccountReport]) -> list[dict[str, Any]]:
    return [
        {
            "account": r.account.name,
            "flow": r.account.flow.value,
            "instance_url": r.account.instance_url,
            "status": r.status,
            "ok": r.ok,
            "error": r.error or None,
            "error_description": r.error_description or None,
            "hint": r.hint or None,
            "username": r.identity.username if r.identity else None,
            "user_id": r.identity.user_id if r.identity else None,
            "org_id": r.identity.org_id if r.identity else None,
            "api_usage": (
                {"used": r.usage.used, "limit": r.usage.limit, "percent": r.usage.percent}
                if r.usage
                else None
            ),
            "objects": [
                {
                    "object": o.name,
                    "visible": o.visible,
                    "query": o.queryable,
                    "create": o.createable,
                    "update": o.updateable,
                    "delete": o.deletable,
                    "failing_blocks": failing_blocks(o),
                    "verdict": verdict(o),
                }
                for o in r.objects
            ],
            "warnings": r.warnings,
        }
        for r in reports
    ]
