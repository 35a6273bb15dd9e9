"""The accounts file (TOML): `AccountsFile` as written (schema: contracts/accounts.schema.json), the
frozen `Account`, `Tenant`, `Accounts` the worker uses. Secrets: inline, `<key>_env` (an environment
variable) or `<key>_file` (a path, e.g. a Kubernetes Secret). A bad file fails at start naming the
account (or tenant) and the key; no secret value is ever in an error, a repr or a log line."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError, ValidationError
from pydantic_core.core_schema import ValidationInfo


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why (never a secret)."""


class Flow(StrEnum):
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a flow name, not a secret
    JWT_BEARER = "jwt_bearer"


SECRET_KEYS = ("client_secret", "refresh_token", "private_key")
REQUIRED_SECRETS: dict[Flow, tuple[str, ...]] = {
    Flow.CLIENT_CREDENTIALS: ("client_secret",),
    Flow.REFRESH_TOKEN: ("client_secret", "refresh_token"),
    Flow.JWT_BEARER: ("private_key",),
}
_TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_API_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,79}$"
# Salesforce caps long (>20 s) concurrent calls, not short ones: a guard above the prefetch.
DEFAULT_MAX_CONCURRENCY = 100
DEFAULT_API_RESERVE_PERCENT = 95.0


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
    merge_lookups: bool = True  # lookups of one shape may travel as one query with IN (...)
    share_reads: bool = True  # identical reads in flight at once share one request

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
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_problem(url: str, *, allow_insecure_localhost: bool) -> str | None:
    """What is wrong with a Salesforce URL, or None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in {"https", "http"} or not host:
        return "must be an https:// URL with a host"
    if parts.scheme == "http":
        if not _is_local_host(host):
            return "plain http:// is refused; Salesforce needs https://"
        if not allow_insecure_localhost:
            return (
                f"plain http:// to {host} needs SFWORKER_ALLOW_INSECURE_LOCALHOST=true "
                "(simulator only)"
            )
    if parts.query or parts.fragment:
        return "must not carry a query or fragment"
    return None


def check_url(url: str, *, allow_insecure_localhost: bool, where: str) -> str:
    """Return the URL without a trailing slash, or raise ConfigError naming `where`."""
    problem = _url_problem(url, allow_insecure_localhost=allow_insecure_localhost)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    return url.rstrip("/")


def _refuse(detail: str, *loc: str) -> PydanticCustomError:
    """A refusal in the file's words; `loc` places it when the validator sees more than the table
    at fault (the whole file's cross-checks). Never put a secret value in `detail`."""
    return PydanticCustomError("sfworker", "{detail}", {"detail": detail, "loc": loc})


def _context(info: ValidationInfo) -> tuple[Path, bool]:
    """From parse_accounts: where relative `_file` paths start; is http://localhost allowed."""
    context = info.context or {}
    return Path(context.get("base_dir", ".")), bool(context.get("allow_insecure_localhost"))


_Text = Annotated[str, Field(min_length=1)]
_Secret = Annotated[SecretStr, Field(min_length=1)]
_FromEnv = Annotated[str, Field(min_length=1, description="A variable holding the secret")]
_FromFile = Annotated[str, Field(min_length=1, description="A file holding the secret")]
_ApiName = Annotated[str, Field(pattern=_API_NAME)]
_TenantName = Annotated[str, Field(pattern=_TENANT_NAME)]


class _Table(BaseModel):
    # strict: TOML has types, so "10" is not an integer and 1 is not true; unknown keys are
    # refused, so a typo never silently disables a setting.
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


class AccountTable(_Table):
    """An [accounts.NAME] table: an External Client App connection to one org."""

    instance_url: str
    flow: Flow = Field(strict=False)
    client_id: str = Field(min_length=1)
    client_secret: _Secret | None = None
    client_secret_env: _FromEnv | None = None
    client_secret_file: _FromFile | None = None
    refresh_token: _Secret | None = None
    refresh_token_env: _FromEnv | None = None
    refresh_token_file: _FromFile | None = None
    private_key: _Secret | None = None
    private_key_env: _FromEnv | None = None
    private_key_file: _FromFile | None = None
    username: str | None = None
    token_url: str | None = None  # {instance_url}/services/oauth2/token
    audience: str | None = None  # https://login.salesforce.com, test. with sandbox = true
    sandbox: bool = False
    tenant: str | None = None
    default: bool = False
    # 31.0 and later: Salesforce retired 21.0 to 30.0 (Summer '25); salesforce.md's shapes.
    api_version: str = Field("62.0", pattern=r"^(3[1-9]|[4-9][0-9])\.[0-9]+$")
    max_concurrency: int = Field(DEFAULT_MAX_CONCURRENCY, ge=1)
    api_reserve_percent: float = Field(DEFAULT_API_RESERVE_PERCENT, gt=0, le=100)
    idempotency_fields: dict[_ApiName, _ApiName] = Field(default_factory=dict)
    coalesce: bool = True
    merge_lookups: bool = True
    share_reads: bool = True

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_text(cls, raw: object) -> object:
        """62, 62.0 and "62" all mean "62.0"."""
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            return raw
        text = str(raw)
        return text if "." in text else f"{text}.0"

    @field_validator("instance_url", "token_url")
    @classmethod
    def _salesforce_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            return None
        problem = _url_problem(url, allow_insecure_localhost=_context(info)[1])
        if problem is not None:
            raise _refuse(problem)
        return url.rstrip("/")

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> Self:
        """Defaults that depend on other keys; each secret resolved from its one source; the
        flow's secrets present and usable."""
        self.tenant = self.tenant or None
        self.token_url = self.token_url or f"{self.instance_url}/services/oauth2/token"
        if self.audience is None:
            sandbox = "test" if self.sandbox else "login"
            self.audience = f"https://{sandbox}.salesforce.com"
        base_dir = _context(info)[0]
        for key in SECRET_KEYS:
            setattr(self, key, self._secret(key, base_dir))
        for key in REQUIRED_SECRETS[self.flow]:
            if getattr(self, key) is None:
                raise _refuse(
                    f"missing key {key!r} (or {key}_env / {key}_file) for flow {self.flow.value}"
                )
        if self.flow is Flow.JWT_BEARER:
            if not self.username:
                raise _refuse("missing key 'username' for flow jwt_bearer")
            self._check_private_key()
        return self

    def _sources(self, key: str) -> list[str]:
        return [k for k in (key, f"{key}_env", f"{key}_file") if getattr(self, k) is not None]

    def _secret(self, key: str, base_dir: Path) -> SecretStr | None:
        given = self._sources(key)
        if len(given) > 1:
            raise _refuse(f"give only one of {', '.join(given)}")
        if not given or given[0] == key:
            inline: SecretStr | None = getattr(self, key)
            return inline
        which = given[0]
        raw: str = getattr(self, which)
        if which.endswith("_env"):
            value = os.environ.get(raw)
            if not value:
                raise _refuse(f"key {which!r}: environment variable {raw} is not set or empty")
            return SecretStr(value)
        path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise _refuse(f"key {which!r}: cannot read {path}: {exc.strerror or 'error'}") from None
        except UnicodeDecodeError:
            raise _refuse(f"key {which!r}: {path} is not UTF-8 text") from None
        text = text.strip() if key != "private_key" else text
        if not text.strip():
            raise _refuse(f"key {which!r}: {path} is empty")
        return SecretStr(text)

    def _check_private_key(self) -> None:
        """A jwt_bearer key must load as a PEM private key now, not fail the first job later."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        assert self.private_key is not None
        try:
            load_pem_private_key(self.private_key.get_secret_value().encode(), password=None)
        except (ValueError, TypeError):
            which = self._sources("private_key")[-1]  # resolved: private_key and its source
            raise _refuse(f"key {which!r}: not an unencrypted PEM private key") from None

    def account(self, name: str) -> Account:
        return Account(name=name, **{f.name: getattr(self, f.name) for f in _ACCOUNT_FIELDS})


class TenantTable(_Table):
    """One [tenants.NAME] table: the RabbitMQ users that publish the tenant's jobs."""

    amqp_users: list[str] = Field(min_length=1)
    reply_to: list[_Text] = Field(default_factory=list)  # regexes of further reply queues

    @field_validator("amqp_users")
    @classmethod
    def _user_names(cls, users: list[str]) -> list[str]:
        for user in users:
            if not user.strip() or user != user.strip():
                raise _refuse(f"{user!r} is not a RabbitMQ user name")
        return users

    @field_validator("reply_to")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _refuse(f"{pattern!r} is not a regex ({exc})") from None
        return patterns

    def tenant(self, name: str) -> Tenant:
        patterns = tuple(re.compile(p) for p in self.reply_to)
        return Tenant(name=name, amqp_users=frozenset(self.amqp_users), reply_to=patterns)


class AccountsFile(_Table):
    """The accounts file: [accounts.NAME] tables and, for strict tenancy, [tenants.NAME] ones."""

    tenants: dict[_TenantName, TenantTable] = Field(default_factory=dict, min_length=1)
    accounts: dict[str, AccountTable] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        """A user publishes for one tenant; one default per tenant; with tenant tables, every
        account belongs to one of them."""
        owner: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for user in tenant.amqp_users:
                if owner.setdefault(user, name) != name:
                    already = f"user {user!r} already publishes for tenant {owner[user]!r}"
                    raise _refuse(already, "tenants", name, "amqp_users")
        defaults: dict[str | None, str] = {}
        for name, account in self.accounts.items():
            if account.default and account.tenant in defaults:
                of_tenant = f" of tenant {account.tenant!r}" if account.tenant else ""
                already = f"account {defaults[account.tenant]!r} is already the default{of_tenant}"
                raise _refuse(already, "accounts", name, "default")
            if account.default:
                defaults[account.tenant] = name
        for name, account in self.accounts.items() if self.tenants else ():
            if account.tenant is None:
                why = "every account needs one when the file has [tenants.NAME] tables"
                raise _refuse(f"missing key 'tenant' ({why})", "accounts", name)
            if account.tenant not in self.tenants:
                raise _refuse(f"no [tenants.{account.tenant}] table", "accounts", name, "tenant")
        return self

    def built(self) -> Accounts:
        return Accounts(
            by_name={name: table.account(name) for name, table in self.accounts.items()},
            tenants={name: table.tenant(name) for name, table in self.tenants.items()},
        )


ACCOUNT_KEYS = frozenset(AccountTable.model_fields)
_ACCOUNT_FIELDS = [f for f in fields(Account) if f.name != "name"]  # all keys of a table
TENANT_KEYS = frozenset(TenantTable.model_fields)
# Why a value was refused, by key or by pydantic's error type, in the file's words; the value
# itself is never quoted.
_RULES = {
    "accounts": "needs at least one [accounts.NAME] table",
    "tenants": "[tenants] needs at least one [tenants.NAME] table",
    "[key]": "a tenant name is letters, digits, '.', '_' and '-' "
    "(at most 128, starting with a letter or digit)",
    "api_version": 'must be a version Salesforce serves, 31.0 or later, like "62.0"',
    "max_concurrency": "must be an integer, at least 1",
    "api_reserve_percent": "must be a number above 0, at most 100",
    "idempotency_fields": 'must be a table of object = "External_Id_Field__c"',
    "amqp_users": "must be a non-empty list of RabbitMQ user names",
    "reply_to": "must be a list of regexes of queue names",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "string_too_short": "must not be empty",
    "too_short": "must not be empty",
}


def _message(error: ErrorDetails) -> str:
    """One pydantic error as the ConfigError message: where (account or tenant), key, why."""
    kind, msg = error["type"], error["msg"]
    loc = [str(part) for part in error.get("ctx", {}).get("loc") or error["loc"]]
    if len(loc) < 2:
        key = loc[0] if loc else ""
        if kind == "extra_forbidden":  # a misspelt [tenant.acme] must not turn tenancy off
            tables = "the file holds [accounts.NAME] and [tenants.NAME] tables"
            return f"accounts file: unknown table or key {key!r} ({tables})"
        return f"accounts file: {_RULES.get(key, msg)}"
    where = f"{'account' if loc[0] == 'accounts' else 'tenant'} {loc[1]!r}"
    key = loc[2] if len(loc) > 2 else ""
    if kind == "sfworker":
        return f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}"
    if not key or key == "[key]":
        return f"{where}: {_RULES[key] if key else f'[{loc[0]}.{loc[1]}] must be a table'}"
    if kind in {"extra_forbidden", "missing"}:
        return f"{where}: {'unknown' if kind == 'extra_forbidden' else 'missing'} key {key!r}"
    if key == "flow":
        return f"{where}: key 'flow': unknown flow {error['input']!r} (one of {', '.join(Flow)})"
    if key == "idempotency_fields" and len(loc) > 3:
        if loc[-1] == "[key]":
            return f"{where}: key {key!r}: {loc[3]!r} is not an object API name"
        return f"{where}: key {key!r}: the field for {loc[3]} must be a field API name"
    rule = _RULES.get(key) or _RULES.get(kind)
    return f"{where}: key {key!r} {rule}" if rule else f"{where}: key {key!r}: {msg}"


def parse_accounts(
    data: Mapping[str, Any], base_dir: Path, *, allow_insecure_localhost: bool = False
) -> Accounts:
    """The accounts file's tables (as tomllib reads them) validated, or a ConfigError naming the
    first problem (unknown keys first) and no value."""
    context = {"base_dir": base_dir, "allow_insecure_localhost": allow_insecure_localhost}
    try:
        file = AccountsFile.model_validate(dict(data), context=context)
    except ValidationError as exc:
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
        message = _message(errors[0])
    else:
        return file.built()
    raise ConfigError(message)  # outside the except: no chained error carrying values


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
