"""Process settings: the `SFWORKER_*` environment variables.

Every setting is listed in docs/configuration.md. The accounts file (TOML) is `worker/accounts.py`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, TypeAdapter, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.runtime.amqp_urls import split_amqp_urls, with_heartbeat

# Two missed heartbeats end a link (RabbitMQ's rule, and the worker's): at 2 s a partitioned
# worker's deliveries go back to the queue 2 to 4 s after its link went silent, which leaves
# most of a caller's 5 to 8 s for another worker to answer them. Lower makes a loaded process
# or a GC pause look like a partition; RabbitMQ's own default (60 s) holds them a minute.
AMQP_HEARTBEAT_SECONDS = 2


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
    redis_sentinels: str | None = Field(
        default=None,
        description="Redis Sentinel addresses, comma-separated host:port: every connection asks "
        "them for the primary (SFWORKER_REDIS_URL then gives only the user, password, database "
        "and TLS: its host is not used, and it may be left unset)",
    )
    redis_sentinel_master: str = Field(
        default="mymaster",
        min_length=1,
        description="With SFWORKER_REDIS_SENTINELS: the name the sentinels monitor the primary by",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="With SFWORKER_REDIS_SENTINELS: the sentinels' own password (their "
        "`requirepass`), when they ask for one",
    )
    redis_wait_replicas: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="Replicas that must confirm (WAIT) an insert marker, a job-id binding, a "
        "token lock and a rotated refresh token before the worker acts on it; unset: 1 when the "
        "primary has replicas, 0 when it has none (0: never wait)",
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
    redis_outage_buffer_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="While Redis is away, bytes of results, job-id bindings and insert markers "
        "kept for it at most (results dropped first, oldest first)",
    )
    redis_allow_eviction: bool = Field(
        default=False,
        description="Start even when Redis's maxmemory-policy can evict the fleet's keys "
        "(allkeys-* or volatile-*), with a warning; false (default) refuses to start",
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
        description="With fair_share: unacked deliveries of the request queue per process while "
        "the worker looks ahead (another account present, or jobs turning over slowly); the "
        "prefetch otherwise",
    )
    fair_share_widen_after_ms: int = Field(
        default=250,
        ge=1,
        le=300_000,
        description="With fair_share: the narrow window widens to routing_prefetch when the jobs "
        "turn over slowly: every slot held and the last prefetch's worth of jobs started over "
        "more than this, or a job waited this long for a slot",
    )
    fair_share_narrow_after_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="With fair_share: the window narrows again (to the prefetch) once no other "
        "account was present and no job waited fair_share_widen_after_ms for this long",
    )
    fair_share_look_ahead_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="With fair_share: when the request queue's window (routing_prefetch) is "
        "full, jobs that waited this long in it for a slot move to their lanes, so that the "
        "worker sees the jobs behind them",
    )
    tenant_queues: bool = Field(
        default=True,
        description="Strict tenant mode: a request queue per tenant, fed by the tenant exchange "
        "under routing keys only the tenant's users may publish with",
    )
    tenant_exchange: str = Field(
        default="salesforce.blocks.tenants",
        description="The topic exchange a tenant's runtime publishes to, with the routing key "
        "`<request routing key>.<its RabbitMQ user>`",
    )
    tenant_prefetch: int = Field(
        default=16, ge=1, le=5000, description="Unacked deliveries of each tenant queue per process"
    )
    tenant_queue_max_length: int = Field(
        default=10_000,
        ge=1,
        description="Jobs a tenant queue holds at most; past it the broker refuses the tenant's "
        "publishes (a negative confirm), never another tenant's",
    )
    amqp_login_user: str | None = Field(
        default=None,
        description="The RabbitMQ user the worker logs in as, when the URL does not say "
        "(EXTERNAL authentication: the certificate's user as RabbitMQ maps it); checked at start",
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

    max_message_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="A request larger than this is refused (a block job is about 1 KB; 64 KiB "
        "leaves room for long field values, and keeps the prefetch windows small in memory)",
    )
    memory_budget_bytes: int = Field(
        default=192 * 1024 * 1024,
        ge=16 * 1024 * 1024,
        description="Bytes a process may hold for work in flight (request bodies, Salesforce's "
        "answers, results): work beyond it waits; one job may hold a quarter of it. Sized for "
        "the Deployment's 512 Mi (docs/benchmarks.md, memory under pressure)",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Once started, freeze the objects of start-up out of the garbage "
        "collector's full passes (runtime/heap.py): a full collection otherwise stops the "
        "event loop for tens of ms, and every job in flight with it",
    )
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
        default=32 * 1024 * 1024, ge=0, description="Bytes of results kept in memory at most"
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
        description="0: never coalesce. With coalesce_policy=window: how long a call of a busy "
        "account waits for others to share a Composite request. With adaptive: only the switch",
    )
    coalesce_policy: Literal["adaptive", "window"] = Field(
        default="adaptive",
        description="adaptive: a call waits for company only when the account's own pace makes "
        "company likely within one round trip, and a group leaves when its oldest call has "
        "waited half a round trip, when it holds 0.6 of a round trip's calls, or when the "
        "account's last request returns; window: the fixed coalesce_wait_ms",
    )
    coalesce_linger_ms: int = Field(
        default=6,
        ge=0,
        le=1000,
        description="adaptive: a group that could leave waits until its second call has waited "
        "this long, taking the calls that come meanwhile (fewer API calls at a few dozen calls "
        "a second, for at most this much latency on the calls that found company at once); 0: "
        "no lingering",
    )
    coalesce_max_wait_ms: int = Field(
        default=250,
        ge=1,
        le=5000,
        description="adaptive: the longest a call waits for company (also at most twice the "
        "account's round trip, and never so long that less than one round trip of its deadline "
        "is left)",
    )

    @property
    def request_prefetch(self) -> int:
        """The request queue's prefetch: with fair share the routing window (a job holds it
        only while it is moved to its lane, or while it runs within its small direct share)."""
        return max(self.prefetch, self.routing_prefetch) if self.fair_share else self.prefetch

    @model_validator(mode="before")
    @classmethod
    def _sentinels_need_no_url(cls, data: Any) -> Any:
        """With sentinels and no URL: plain connections, database 0 (the URL, when set, only
        carries the credentials, database and TLS)."""
        if isinstance(data, dict) and data.get("redis_sentinels") and not data.get("redis_url"):
            return {**data, "redis_url": "redis://"}
        return data

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            sentinel_addresses(value)
            return value
        return None

    def sentinels(self) -> list[tuple[str, int]]:
        """The addresses of SFWORKER_REDIS_SENTINELS, in order (empty: a plain Redis URL)."""
        return sentinel_addresses(self.redis_sentinels or "")

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


def sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """`host:port` entries, comma-separated (the port is required: a sentinel's is not 6379)."""
    addresses = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a sentinel is host:port, not {entry!r}")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise ValueError("no sentinel address")
    return addresses


_SECONDS = re.compile(r"(\d+(?:\.\d*)?)\s*([smhdSMHD]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION: TypeAdapter[timedelta] = TypeAdapter(timedelta)
