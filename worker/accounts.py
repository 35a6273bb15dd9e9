"""The accounts file (TOML): integration accounts and tenants.

Secrets in the accounts file may be given inline, as `<key>_env` (the name of an environment
variable) or as `<key>_file` (a path, e.g. a mounted Kubernetes Secret). A bad file fails at start
with a message that names the account and the key; no secret value ever appears in an error, a repr
or a log line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why (never a secret)."""


class Flow(StrEnum):
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a flow name, not a secret
    JWT_BEARER = "jwt_bearer"


SECRET_KEYS = ("client_secret", "refresh_token", "private_key")
_REQUIRED_SECRETS: dict[Flow, tuple[str, ...]] = {
    Flow.CLIENT_CREDENTIALS: ("client_secret",),
    Flow.REFRESH_TOKEN: ("client_secret", "refresh_token"),
    Flow.JWT_BEARER: ("private_key",),
}
_PLAIN_KEYS = {
    "tenant",
    "default",
    "instance_url",
    "token_url",
    "flow",
    "client_id",
    "username",
    "audience",
    "sandbox",
    "api_version",
    "max_concurrency",
    "api_reserve_percent",
    "idempotency_fields",
    "coalesce",
}
ACCOUNT_KEYS = (
    _PLAIN_KEYS
    | set(SECRET_KEYS)
    | {f"{k}_env" for k in SECRET_KEYS}
    | {f"{k}_file" for k in SECRET_KEYS}
)
_LOCAL_HOSTS = {"localhost"}
TENANT_KEYS = {"amqp_users", "reply_to"}
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Salesforce limits long (>20 s) concurrent calls to 25 per org, not short ones: the cap is a
# guard against a slow org, set above a process's prefetch so it never throttles normal load.
DEFAULT_MAX_CONCURRENCY = 100
DEFAULT_API_RESERVE_PERCENT = 95.0
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


@dataclass(frozen=True)
class Account:
    """One integration account (an External Client App connection to one org)."""

    name: str
    instance_url: str
    token_url: str
    flow: Flow
    client_id: str
    client_secret: SecretStr | None = field(default=None, repr=False)
    refresh_token: SecretStr | None = field(default=None, repr=False)
    private_key: SecretStr | None = field(default=None, repr=False)
    username: str | None = None
    audience: str = "https://login.salesforce.com"
    tenant: str | None = None
    default: bool = False
    api_version: str = "62.0"
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    api_reserve_percent: float = DEFAULT_API_RESERVE_PERCENT
    idempotency_fields: Mapping[str, str] = field(default_factory=dict, hash=False)
    coalesce: bool = True  # concurrent calls may share one Composite request

    @property
    def api_base(self) -> str:
        return f"{self.instance_url}/services/data/v{self.api_version}"

    @cached_property
    def scope(self) -> str:
        """Who this account is at Salesforce (org, app, user, flow) as a short hash: its token
        and result keys in Redis carry it, so two deployments sharing a Redis and an account
        name, but not the org, never share a token or a result."""
        who = "\n".join((self.instance_url, self.client_id, self.username or "", self.flow.value))
        return hashlib.sha256(who.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Tenant:
    """A tenant of the fleet and the RabbitMQ users that publish its jobs."""

    name: str
    amqp_users: frozenset[str]
    # Extra queue names (regexes, whole name) its jobs may name as reply_to in strict mode,
    # besides `<user_id>.<anything>`, `amq.gen-...` and direct reply-to (worker/tenancy.py).
    reply_to: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class Accounts:
    by_name: Mapping[str, Account]
    tenants: Mapping[str, Tenant] = field(default_factory=dict)

    @property
    def strict(self) -> bool:
        """With [tenants.NAME] tables, a job's tenant is the one its validated user_id
        publishes for (worker/tenancy.py); without, jobs are not authenticated per tenant."""
        return bool(self.tenants)

    def tenant_of_user(self, user: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if user in t.amqp_users), None)

    def resolve(self, name: str | None, tenant: str | None) -> Account | None:
        """The named account; else the default of the job's tenant; else (no tenant) the
        default without a tenant, or the only default there is."""
        if name is not None:
            return self.by_name.get(name)
        defaults = [a for a in self.by_name.values() if a.default]
        if tenant is not None:
            return next((a for a in defaults if a.tenant == tenant), None)
        untenanted = [a for a in defaults if a.tenant is None]
        if untenanted:
            return untenanted[0]
        return defaults[0] if len(defaults) == 1 else None

    def __len__(self) -> int:
        return len(self.by_name)


def _is_local_host(host: str) -> bool:
    if host in _LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure_localhost: bool, where: str) -> str:
    """Return the URL without a trailing slash, or raise ConfigError naming `where`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in {"https", "http"} or not host:
        raise ConfigError(f"{where}: must be an https:// URL with a host")
    if parts.scheme == "http":
        if not _is_local_host(host):
            raise ConfigError(f"{where}: plain http:// is refused; Salesforce needs https://")
        if not allow_insecure_localhost:
            raise ConfigError(
                f"{where}: plain http:// to {host} needs SFWORKER_ALLOW_INSECURE_LOCALHOST=true "
                "(simulator only)"
            )
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: must not carry a query or fragment")
    return url.rstrip("/")


def _read_secret(name: str, key: str, table: Mapping[str, Any], base_dir: Path) -> SecretStr | None:
    given = [k for k in (key, f"{key}_env", f"{key}_file") if k in table]
    if len(given) > 1:
        raise ConfigError(f"account {name!r}: give only one of {', '.join(given)}")
    if not given:
        return None
    which = given[0]
    raw = table[which]
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"account {name!r}: key {which!r} must be a non-empty string")
    if which == key:
        return SecretStr(raw)
    if which.endswith("_env"):
        value = os.environ.get(raw)
        if not value:
            raise ConfigError(
                f"account {name!r}: key {which!r}: environment variable {raw} is not set or empty"
            )
        return SecretStr(value)
    path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"account {name!r}: key {which!r}: cannot read {path}: {exc.strerror or 'error'}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"account {name!r}: key {which!r}: {path} is not UTF-8 text") from None
    text = text.strip() if key != "private_key" else text
    if not text.strip():
        raise ConfigError(f"account {name!r}: key {which!r}: {path} is empty")
    return SecretStr(text)


def _typed(name: str, table: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """table[key] checked to be of `kind`, or `default` when absent."""
    if key not in table:
        return default
    value = table[key]
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"account {name!r}: key {key!r} must be an integer")
    if not isinstance(value, kind):
        raise ConfigError(f"account {name!r}: key {key!r} must be a {kind.__name__}")
    return value


def _check_private_key(name: str, table: Mapping[str, Any], key: SecretStr | None) -> None:
    """A jwt_bearer key must load as a PEM private key now, not fail the first job later."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    assert key is not None
    which = next(k for k in ("private_key", "private_key_env", "private_key_file") if k in table)
    try:
        load_pem_private_key(key.get_secret_value().encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"account {name!r}: key {which!r}: not an unencrypted PEM private key"
        ) from None


def _api_version(name: str, raw: Any) -> str:
    text = str(raw) if isinstance(raw, str | float | int) and not isinstance(raw, bool) else ""
    if "." not in text:
        text += ".0"
    major, _, minor = text.partition(".")
    if not (major.isdigit() and minor.isdigit() and 20 <= int(major) < 100):
        raise ConfigError(f"account {name!r}: key 'api_version' must look like \"62.0\"")
    return text


def _idempotency_fields(name: str, raw: Any) -> dict[str, str]:
    """`{ Case = "Sfworker_Job_Id__c" }`: inserts on Case become upserts keyed by job_id."""
    where = f"account {name!r}: key 'idempotency_fields'"
    if not isinstance(raw, dict):
        raise ConfigError(f'{where} must be a table of object = "External_Id_Field__c"')
    fields: dict[str, str] = {}
    for sobject, field_name in raw.items():
        if not _API_NAME.match(sobject):
            raise ConfigError(f"{where}: {sobject!r} is not an object API name")
        if not isinstance(field_name, str) or not _API_NAME.match(field_name):
            raise ConfigError(f"{where}: the field for {sobject} must be a field API name")
        fields[sobject] = field_name
    return fields


def _parse_account(
    name: str, table: Any, base_dir: Path, *, allow_insecure_localhost: bool
) -> Account:
    if not isinstance(table, dict):
        raise ConfigError(f"account {name!r}: [accounts.{name}] must be a table")
    unknown = sorted(set(table) - ACCOUNT_KEYS)
    if unknown:
        raise ConfigError(f"account {name!r}: unknown key {unknown[0]!r}")
    for required in ("instance_url", "flow", "client_id"):
        if required not in table:
            raise ConfigError(f"account {name!r}: missing key {required!r}")
    flow_raw = _typed(name, table, "flow", str, "")
    try:
        flow = Flow(flow_raw)
    except ValueError:
        allowed = ", ".join(f.value for f in Flow)
        raise ConfigError(
            f"account {name!r}: key 'flow': unknown flow {flow_raw!r} (one of {allowed})"
        ) from None
    instance_url = check_url(
        _typed(name, table, "instance_url", str, ""),
        allow_insecure_localhost=allow_insecure_localhost,
        where=f"account {name!r}: key 'instance_url'",
    )
    token_url = check_url(
        _typed(name, table, "token_url", str, f"{instance_url}/services/oauth2/token"),
        allow_insecure_localhost=allow_insecure_localhost,
        where=f"account {name!r}: key 'token_url'",
    )
    secrets = {key: _read_secret(name, key, table, base_dir) for key in SECRET_KEYS}
    for key in _REQUIRED_SECRETS[flow]:
        if secrets[key] is None:
            raise ConfigError(
                f"account {name!r}: missing key {key!r} (or {key}_env / {key}_file) "
                f"for flow {flow.value}"
            )
    client_id = _typed(name, table, "client_id", str, "")
    if not client_id:
        raise ConfigError(f"account {name!r}: key 'client_id' must not be empty")
    username = _typed(name, table, "username", str, None)
    if flow is Flow.JWT_BEARER:
        if not username:
            raise ConfigError(f"account {name!r}: missing key 'username' for flow jwt_bearer")
        _check_private_key(name, table, secrets["private_key"])
    sandbox = _typed(name, table, "sandbox", bool, False)
    default_audience = "https://test.salesforce.com" if sandbox else "https://login.salesforce.com"
    api_version = _api_version(name, table.get("api_version", "62.0"))
    max_concurrency = _typed(name, table, "max_concurrency", int, DEFAULT_MAX_CONCURRENCY)
    if max_concurrency < 1:
        raise ConfigError(f"account {name!r}: key 'max_concurrency' must be at least 1")
    reserve = table.get("api_reserve_percent", DEFAULT_API_RESERVE_PERCENT)
    if isinstance(reserve, bool) or not isinstance(reserve, int | float) or not 0 < reserve <= 100:
        raise ConfigError(
            f"account {name!r}: key 'api_reserve_percent' must be a number above 0, at most 100"
        )
    tenant = _typed(name, table, "tenant", str, None)
    return Account(
        name=name,
        instance_url=instance_url,
        token_url=token_url,
        flow=flow,
        client_id=client_id,
        client_secret=secrets["client_secret"],
        refresh_token=secrets["refresh_token"],
        private_key=secrets["private_key"],
        username=username,
        audience=_typed(name, table, "audience", str, default_audience),
        tenant=tenant or None,
        default=_typed(name, table, "default", bool, False),
        api_version=api_version,
        max_concurrency=max_concurrency,
        api_reserve_percent=float(reserve),
        idempotency_fields=_idempotency_fields(name, table.get("idempotency_fields", {})),
        coalesce=_typed(name, table, "coalesce", bool, True),
    )


def _parse_tenants(data: Any) -> dict[str, Tenant]:
    """The [tenants.NAME] tables; each RabbitMQ user publishes for one tenant at most."""
    if data is None:
        return {}
    if not isinstance(data, dict) or not data:
        raise ConfigError("accounts file: [tenants] needs at least one [tenants.NAME] table")
    tenants: dict[str, Tenant] = {}
    owner: dict[str, str] = {}
    for name, table in data.items():
        if not _TENANT_NAME.fullmatch(name):
            raise ConfigError(
                f"tenant {name!r}: a tenant name is letters, digits, '.', '_' and '-' "
                "(at most 128, starting with a letter or digit)"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"tenant {name!r}: [tenants.{name}] must be a table")
        unknown = sorted(set(table) - TENANT_KEYS)
        if unknown:
            raise ConfigError(f"tenant {name!r}: unknown key {unknown[0]!r}")
        users = table.get("amqp_users")
        if users is None:
            raise ConfigError(f"tenant {name!r}: missing key 'amqp_users'")
        if not isinstance(users, list) or not users or not all(isinstance(u, str) for u in users):
            raise ConfigError(
                f"tenant {name!r}: key 'amqp_users' must be a non-empty list of RabbitMQ user names"
            )
        for user in users:
            if not user.strip() or user != user.strip():
                raise ConfigError(
                    f"tenant {name!r}: key 'amqp_users': {user!r} is not a RabbitMQ user name"
                )
            if owner.get(user, name) != name:
                raise ConfigError(
                    f"tenant {name!r}: key 'amqp_users': user {user!r} already publishes for "
                    f"tenant {owner[user]!r}"
                )
            owner[user] = name
        tenants[name] = Tenant(
            name=name, amqp_users=frozenset(users), reply_to=_reply_patterns(name, table)
        )
    return tenants


def _reply_patterns(name: str, table: Mapping[str, Any]) -> tuple[re.Pattern[str], ...]:
    """A tenant's `reply_to`: regexes a reply queue's whole name may match."""
    raw = table.get("reply_to", [])
    if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
        raise ConfigError(
            f"tenant {name!r}: key 'reply_to' must be a list of regexes of queue names"
        )
    patterns = []
    for pattern in raw:
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(
                f"tenant {name!r}: key 'reply_to': {pattern!r} is not a regex ({exc})"
            ) from None
    return tuple(patterns)


def _check_tenants(accounts: Mapping[str, Account], tenants: Mapping[str, Tenant]) -> None:
    """With tenant tables, every account belongs to one of them."""
    if not tenants:
        return
    for account in accounts.values():
        if account.tenant is None:
            raise ConfigError(
                f"account {account.name!r}: missing key 'tenant' (every account needs one when "
                "the file has [tenants.NAME] tables)"
            )
        if account.tenant not in tenants:
            raise ConfigError(
                f"account {account.name!r}: key 'tenant': no [tenants.{account.tenant}] table"
            )


def parse_accounts(
    data: Mapping[str, Any], base_dir: Path, *, allow_insecure_localhost: bool = False
) -> Accounts:
    unknown = sorted(set(data) - {"accounts", "tenants"})
    if unknown:
        # A misspelt [tenant.acme] must not silently turn tenant isolation off.
        raise ConfigError(
            f"accounts file: unknown table or key {unknown[0]!r} "
            "(the file holds [accounts.NAME] and [tenants.NAME] tables)"
        )
    tenants = _parse_tenants(data.get("tenants"))
    tables = data.get("accounts")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError("accounts file: needs at least one [accounts.NAME] table")
    accounts = {
        name: _parse_account(
            name, table, base_dir, allow_insecure_localhost=allow_insecure_localhost
        )
        for name, table in tables.items()
    }
    seen_default: dict[str | None, str] = {}
    for account in accounts.values():
        if not account.default:
            continue
        if account.tenant in seen_default:
            raise ConfigError(
                f"account {account.name!r}: key 'default': account "
                f"{seen_default[account.tenant]!r} is already the default"
                + (f" of tenant {account.tenant!r}" if account.tenant else "")
            )
        seen_default[account.tenant] = account.name
    _check_tenants(accounts, tenants)
    return Accounts(by_name=accounts, tenants=tenants)


def load_accounts(path: Path, *, allow_insecure_localhost: bool = False) -> Accounts:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"accounts file {path}: cannot read: {exc.strerror or 'error'}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The decoder's message names a line and column, never the value.
        raise ConfigError(f"accounts file {path}: not valid TOML: {exc}") from None
    return parse_accounts(data, path.parent, allow_insecure_localhost=allow_insecure_localhost)
