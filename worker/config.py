"""Settings (environment variables `SFWORKER_*`) and the accounts file (TOML).

Every setting is listed in docs/configuration.md. Secrets in the accounts file may be given inline,
as `<key>_env` (the name of an environment variable) or as `<key>_file` (a path, e.g. a mounted
Kubernetes Secret). A bad file fails at start with a message that names the account and the key;
no secret value ever appears in an error, a repr or a log line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Two missed heartbeats end a link (RabbitMQ's rule, and the worker's): at 2 s a partitioned
# worker's deliveries go back to the queue 2 to 4 s after its link went silent, which leaves
# most of a caller's 5 to 8 s for another worker to answer them. Lower makes a loaded process
# or a GC pause look like a partition; RabbitMQ's own default (60 s) holds them a minute.
AMQP_HEARTBEAT_SECONDS = 2


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why (never a secret)."""


class Settings(BaseSettings):
    """Process settings, read from `SFWORKER_<NAME>` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SFWORKER_", extra="ignore", frozen=True)

    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="RabbitMQ URL, or several comma-separated (the nodes of a cluster, tried in "
        "turn); may carry credentials, never logged",
    )
    amqp_heartbeat_seconds: int = Field(
        default=AMQP_HEARTBEAT_SECONDS,
        ge=1,
        le=60,
        description="AMQP heartbeat of every broker URL that sets none (`?heartbeat=N`): a link "
        "silent for two heartbeats is closed, by RabbitMQ and by the worker",
    )
    accounts_file: Path = Field(default=Path("accounts.toml"), description="TOML accounts file")
    http_host: str = Field(default="0.0.0.0", description="Bind address of /metrics and health")
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 disables the endpoint")
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis URL for state shared by the fleet (tokens, results, limits); unset: "
        "each process works alone",
    )
    redis_prefix: str = Field(
        default="sfworker:", min_length=1, description="Prefix of every Redis key the worker writes"
    )
    redis_timeout_seconds: float = Field(
        default=1.0, gt=0, le=10, description="Timeout of one Redis command (then: fallback)"
    )
    redis_retry_seconds: float = Field(
        default=2.0, gt=0, le=15, description="While Redis is down, how often it is tried again"
    )
    redis_encryption_key: SecretStr | None = Field(
        default=None,
        description="Keys that seal tokens, results and claims in Redis (AES-256-GCM): "
        "[ID:]KEY entries, comma-separated, newest first; the first seals, any opens",
    )
    redis_encryption_key_file: Path | None = Field(
        default=None,
        description="A file holding SFWORKER_REDIS_ENCRYPTION_KEY's value (one entry a line)",
    )
    redis_plaintext: bool = Field(
        default=False,
        description="With Redis and no encryption key: true stores values in plain text; "
        "false (default) refuses to start",
    )
    refresh_token_ttl_days: float = Field(
        default=30.0,
        gt=0,
        le=3650,
        description="How long a refresh token the fleet rotated is kept in Redis after its last "
        "use (match the External Client App's refresh-token idle timeout)",
    )
    token_lock_lease_seconds: float = Field(
        default=5.0,
        ge=1,
        le=30,
        description="Lease of the fleet-wide token refresh lock (renewed while its holder lives)",
    )
    usage_share_seconds: float = Field(
        default=1.0, gt=0, le=2, description="How often API usage is shared with the fleet"
    )
    limits_probe_seconds: float = Field(
        default=5.0, gt=0, le=10, description="While an account is held back, /limits is read"
    )
    prefetch: int = Field(default=32, ge=1, le=5000, description="In-flight jobs per process")
    fair_share: bool = Field(
        default=True,
        description="A lane (queue) per account for jobs beyond its share of the prefetch",
    )
    routing_prefetch: int = Field(
        default=1024,
        ge=1,
        le=65535,
        description="With fair_share: unacked deliveries of the request queue per process",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level"
    )
    log_format: Literal["json", "text"] = Field(default="json", description="Log line format")

    request_exchange: str = "salesforce.blocks"
    request_routing_key: str = "salesforce.blocks"
    request_queue: str = "salesforce.blocks"
    dead_letter_exchange: str = "salesforce.blocks.dlx"
    dead_letter_queue: str = "salesforce.blocks.dead"
    results_exchange: str = "salesforce.results"
    delivery_limit: int = Field(default=5, ge=1, description="Quorum x-delivery-limit")
    dead_letter_max_age: float = Field(
        default=7 * 86400.0,
        ge=1,
        le=365 * 86400.0,
        description="Seconds a dead letter is kept (x-message-ttl of the dead-letter queue); "
        "also `7d`, `12h`, `30m`, `P7D`",
    )
    dead_letter_max_length: int = Field(
        default=100_000, ge=1, description="Dead letters kept at most (oldest dropped first)"
    )

    max_message_bytes: int = Field(default=1_048_576, ge=1024, description="Larger -> rejected")
    shutdown_grace_seconds: float = Field(default=25.0, ge=0, description="Drain time on SIGTERM")
    publish_timeout_seconds: float = Field(default=5.0, gt=0, description="Wait for a confirm")
    watchdog_interval_seconds: float = Field(default=5.0, gt=0, description="Consumer check")
    reconnect_interval_seconds: float = Field(
        default=2.0, gt=0, description="Pause between reconnection attempts to RabbitMQ"
    )
    startup_timeout_seconds: float = Field(
        default=60.0, ge=0, description="How long the first connection to RabbitMQ is retried"
    )

    result_cache_size: int = Field(default=10_000, ge=0, description="Results kept for replay")
    result_cache_ttl_seconds: float = Field(default=900.0, gt=0, description="How long")
    result_cache_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Bytes of results kept in memory at most"
    )
    max_response_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        description="A Salesforce response body larger than this is not read further",
    )
    max_result_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=16 * 1024,
        description="A result larger than this is answered RESULT_TOO_LARGE (below RabbitMQ's "
        "max_message_size: 16 MiB by default in 4.x, 128 MiB in 3.x)",
    )

    http_pool_size: int = Field(default=100, ge=1, description="Connections to Salesforce")
    http_connect_timeout_seconds: float = Field(default=3.0, gt=0)
    allow_insecure_localhost: bool = Field(
        default=True,
        description="Allow plain http:// to loopback hosts only (the simulator); false refuses it",
    )
    max_attempts: int = Field(default=4, ge=1, le=20, description="Calls per operation at most")
    retry_base_ms: int = Field(default=100, ge=1, description="Backoff base (full jitter)")
    retry_cap_ms: int = Field(default=2000, ge=1, description="Backoff cap")
    token_backoff_initial_seconds: float = Field(default=1.0, gt=0)
    token_backoff_max_seconds: float = Field(default=60.0, gt=0)
    token_timeout_seconds: float = Field(default=5.0, gt=0, description="Token endpoint call")
    coalesce_wait_ms: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="How long a call waits for others of its account to share a Composite "
        "request (0: never coalesce)",
    )

    @property
    def request_prefetch(self) -> int:
        """The request queue's prefetch: with fair share the routing window (a job holds it
        only while it is moved to its lane, or while it runs within its small direct share)."""
        return max(self.prefetch, self.routing_prefetch) if self.fair_share else self.prefetch

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_urls(cls, value: SecretStr) -> SecretStr:
        split_amqp_urls(value.get_secret_value())
        return value

    def amqp_urls(self) -> list[str]:
        """The broker addresses of SFWORKER_AMQP_URL (comma-separated), in order; each with
        `heartbeat=SFWORKER_AMQP_HEARTBEAT_SECONDS` unless it sets its own."""
        return [
            with_heartbeat(url, self.amqp_heartbeat_seconds)
            for url in split_amqp_urls(self.amqp_url.get_secret_value())
        ]

    @field_validator("dead_letter_max_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text[:1] in ("P", "p"):
            return _DURATION.validate_python(text.upper()).total_seconds()
        found = _SECONDS.fullmatch(text)
        if found is None:
            raise ValueError("a duration: seconds, or a number with s, m, h or d, or ISO 8601")
        return float(found[1]) * _UNITS[found[2].lower()]

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


_SECONDS = re.compile(r"(\d+(?:\.\d*)?)\s*([smhdSMHD]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)


def with_heartbeat(url: str, seconds: int) -> str:
    """`url` with `heartbeat=seconds` in its query string, unless it already names one."""
    parts = urlsplit(url)
    if "heartbeat" in parse_qs(parts.query, keep_blank_values=True):
        return url
    query = f"{parts.query}&heartbeat={seconds}" if parts.query else f"heartbeat={seconds}"
    return urlunsplit(parts._replace(query=query))


def split_amqp_urls(raw: str) -> list[str]:
    """The comma-separated broker URLs of a setting; ValueError (naming the position, never the
    value: it may carry a password) when one is not an amqp:// or amqps:// URL with a host."""
    urls = [part.strip() for part in raw.split(",")]
    for position, url in enumerate(urls, 1):
        parts = urlsplit(url)
        try:
            host_ok = bool(parts.hostname)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            host_ok = False
        if parts.scheme not in {"amqp", "amqps"} or not host_ok:
            where = f"address {position} of {len(urls)}" if len(urls) > 1 else "the address"
            raise ValueError(
                f"{where} must be an amqp:// or amqps:// URL with a host "
                "(several addresses are separated by commas)"
            )
    return urls


# --- accounts ------------------------------------------------------------------------------


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
