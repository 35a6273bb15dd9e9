"""Prometheus metrics: one registry per process (a fresh one per worker in tests).

Base units (seconds), counters end in `_total`, labels are bounded: account names come from the
accounts file, operations and codes from the contract. No job ids, record ids or query text.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.contract import ErrorCode, Operation, Status
from worker.tenancy import Reason

# Why a message was refused before execution (jobs.decode): metric label values.
REFUSAL_REASONS = (
    "too_large",
    "not_json",
    "not_object",
    "bad_version",
    "invalid",
    "forged_x_death",
)

# Why a Salesforce call was retried (client.py, errors.py): the label values known up front;
# other `http_<status>` reasons appear when they happen.
RETRY_REASONS = (
    "connection_failed",
    "connection_lost",
    "server_unavailable",
    "http_500",
    "concurrent_limit",
    "unable_to_lock_row",
    "query_timeout",
    "connection_wait",
)
# What a Salesforce request is counted as: the job's operation, or a Composite request.
REQUEST_KINDS = (*(op.value for op in Operation), "composite")

_JOB_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_WAIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_COALESCE_BUCKETS = (1, 2, 3, 4, 5, 8, 12, 16, 20, 25)
_GC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "sfworker_jobs_total",
            "Block jobs answered, by operation, status (exit) and error code ('' when ok)",
            ["operation", "status", "code"],
            registry=r,
        )
        self.job_duration = Histogram(
            "sfworker_job_duration_seconds",
            "Time from receipt of a job to its result being published",
            ["operation", "status"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.job_queue_wait = Histogram(
            "sfworker_job_queue_wait_seconds",
            "Time a job spent between sent_at (or the AMQP timestamp) and receipt",
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.jobs_in_flight = Gauge(
            "sfworker_jobs_in_flight", "Jobs being executed by this process", registry=r
        )
        self.sf_requests = Counter(
            "sfworker_salesforce_requests_total",
            "Salesforce REST calls by account, operation and HTTP status ('error' when none)",
            ["account", "operation", "http_status"],
            registry=r,
        )
        self.sf_request_duration = Histogram(
            "sfworker_salesforce_request_duration_seconds",
            "Latency of one Salesforce REST call",
            ["account", "operation"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.sf_retries = Counter(
            "sfworker_salesforce_retries_total",
            "Salesforce calls retried, by reason",
            ["account", "operation", "reason"],
            registry=r,
        )
        self.composite_requests = Counter(
            "sfworker_composite_requests_total",
            "Composite requests sent (each one API call carrying several jobs' calls)",
            ["account"],
            registry=r,
        )
        self.composite_subrequests = Counter(
            "sfworker_composite_subrequests_total",
            "Job calls carried inside Composite requests",
            ["account"],
            registry=r,
        )
        self.coalesced_calls = Histogram(
            "sfworker_coalesced_calls_per_request",
            "Job calls per Salesforce request among calls that could be coalesced (1: alone)",
            ["account"],
            buckets=_COALESCE_BUCKETS,
            registry=r,
        )
        self.coalesce_wait = Histogram(
            "sfworker_coalesce_wait_seconds",
            "How long a call waited for others to share a Composite request with",
            ["account"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.api_calls_saved = Counter(
            "sfworker_api_calls_saved_total",
            "API calls not spent thanks to coalescing (calls carried minus requests sent)",
            ["account"],
            registry=r,
        )
        self.api_calls_saved_by = Counter(
            "sfworker_api_calls_saved_by_mechanism_total",
            "API calls not spent, by mechanism: composite (calls sharing a Composite request), "
            "lookup (lookups merged into one IN query), shared_read (an identical read in flight)",
            ["account", "mechanism"],
            registry=r,
        )
        self.merge_fallbacks = Counter(
            "sfworker_lookup_merge_fallbacks_total",
            "Merged lookup queries whose answer could not be split (an error, paging, a record "
            "no job claims): their jobs were then sent alone",
            ["account"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sfworker_rate_limited_total",
            "Jobs refused for the API limit, by kind: daily or concurrent (Salesforce's "
            "REQUEST_LIMIT_EXCEEDED), reserve (held back by api_reserve_percent, not sent), "
            "connections (no connection of the account's budget of the HTTP pool came free)",
            ["account", "kind"],
            registry=r,
        )
        self.token_requests = Counter(
            "sfworker_token_requests_total",
            "Calls to the OAuth token endpoint, by flow and outcome",
            ["account", "flow", "outcome"],
            registry=r,
        )
        self.token_request_duration = Histogram(
            "sfworker_token_request_duration_seconds",
            "Latency of one OAuth token request",
            ["account"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.token_waits = Counter(
            "sfworker_token_waits_total",
            "Jobs that waited on a token request made by another job or another worker",
            ["account"],
            registry=r,
        )
        self.token_invalidations = Counter(
            "sfworker_token_invalidations_total",
            "Access tokens dropped after 401 INVALID_SESSION_ID",
            ["account"],
            registry=r,
        )
        self.api_usage_used = Gauge(
            "sfworker_salesforce_api_usage_used",
            "Org API requests used in the rolling 24 h (from Sforce-Limit-Info)",
            ["account"],
            registry=r,
        )
        self.api_usage_limit = Gauge(
            "sfworker_salesforce_api_usage_limit",
            "Org daily API request limit (from Sforce-Limit-Info)",
            ["account"],
            registry=r,
        )
        self.app_api_usage_used = Gauge(
            "sfworker_salesforce_app_api_usage_used",
            "This connected app's API requests used (per-app-api-usage)",
            ["account"],
            registry=r,
        )
        self.app_api_usage_limit = Gauge(
            "sfworker_salesforce_app_api_usage_limit",
            "This connected app's API request limit (per-app-api-usage)",
            ["account"],
            registry=r,
        )
        self.results_published = Counter(
            "sfworker_results_published_total",
            "Results published, by destination (reply_to or results exchange)",
            ["destination"],
            registry=r,
        )
        self.replies_unroutable = Counter(
            "sfworker_replies_unroutable_total",
            "Results the broker could not route (the caller's queue is gone)",
            registry=r,
        )
        self.last_job = Gauge(
            "sfworker_last_job_timestamp_seconds",
            "Unix time at which this process last answered a job (0 until the first)",
            registry=r,
        )
        self.results_replayed = Counter(
            "sfworker_results_replayed_total",
            "Redelivered jobs answered from the result store instead of executing again",
            registry=r,
        )
        self.job_id_reused = Counter(
            "sfworker_job_id_reused_total",
            "Jobs answered JOB_ID_REUSED: their job_id was still bound to another job",
            registry=r,
        )
        self.redeliveries = Counter(
            "sfworker_redeliveries_total", "Deliveries flagged redelivered", registry=r
        )
        self.invalid_requests = Counter(
            "sfworker_invalid_requests_total",
            "Messages refused before execution, by reason",
            ["reason"],
            registry=r,
        )
        self.tenant_refusals = Counter(
            "sfworker_tenant_refusals_total",
            "Jobs refused by tenant isolation (answered FORBIDDEN_ACCOUNT; forbidden_reply_to: "
            "dead-lettered), by reason and the publisher's tenant ('' when unknown)",
            ["reason", "tenant"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "sfworker_dead_lettered_total",
            "Messages sent to the dead-letter queue by this worker",
            ["reason"],
            registry=r,
        )
        self.routing_window = Gauge(
            "sfworker_routing_window",
            "With fair share: the request queue's prefetch now (narrow: SFWORKER_PREFETCH, while "
            "one account is alone; wide: SFWORKER_ROUTING_PREFETCH, while looking ahead)",
            registry=r,
        )
        self.lane_moves = Counter(
            "sfworker_lane_moves_total",
            "Jobs moved from the request queue to their account's lane (fair share): the "
            "account already held its share of the request queue's prefetch",
            ["account"],
            registry=r,
        )
        self.orphan_queue_messages = Gauge(
            "sfworker_orphan_queue_messages",
            "Jobs waiting in a lane or tenant queue whose account or tenant is gone from the "
            "accounts file (nobody answers them), as seen at start",
            ["queue"],
            registry=r,
        )
        self.handler_crashes = Counter(
            "sfworker_handler_crashes_total",
            "Unexpected errors while handling a delivery (the message is requeued)",
            registry=r,
        )
        self.redis_fallback = Gauge(
            "sfworker_redis_fallback",
            "1 while Redis is configured but unreachable (the worker uses in-process state)",
            registry=r,
        )
        self.redis_unreadable = Counter(
            "sfworker_redis_unreadable",
            "Values read from Redis that did not open (sealed with a key this worker does not "
            "hold, tampered, or plain text where a sealed value belongs): read as absent",
            registry=r,
        )
        self.limits_probes = Counter(
            "sfworker_limits_probes_total",
            "Reads of Salesforce /limits (first use of an account, or while it is held back)",
            ["account", "outcome"],
            registry=r,
        )
        self.amqp_reconnects = Counter(
            "sfworker_amqp_reconnects_total", "Reconnections to RabbitMQ", registry=r
        )
        self.amqp_silent_links = Counter(
            "sfworker_amqp_silent_links_total",
            "Connections to RabbitMQ closed by the worker after two heartbeats without a frame",
            registry=r,
        )
        self.amqp_blocked = Gauge(
            "sfworker_amqp_blocked",
            "1 while RabbitMQ blocks this worker's connection (memory or disk alarm)",
            registry=r,
        )
        self.asyncio_tasks = Gauge(
            "sfworker_asyncio_tasks",
            "asyncio tasks alive in the worker's event loop (a leak shows as a rising line)",
            registry=r,
        )
        self.gc_pause = Histogram(
            "sfworker_gc_pause_seconds",
            "How long each garbage collection stopped the event loop, by generation (runtime/"
            "heap.py: start-up's objects are frozen out of full collections)",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.memory_budget_used = Gauge(
            "sfworker_memory_budget_used_bytes",
            "Bytes counted against the memory budget now (SFWORKER_MEMORY_BUDGET_BYTES)",
            registry=r,
        )
        self.memory_budget_waiting = Gauge(
            "sfworker_memory_budget_waiting",
            "Jobs waiting for room in the memory budget now",
            registry=r,
        )
        self.memory_budget_refused = Counter(
            "sfworker_memory_budget_refused_total",
            "Jobs answered RESULT_TOO_LARGE because they alone would pass a quarter of the budget",
            registry=r,
        )
        self.consumer_restarts = Counter(
            "sfworker_consumer_restarts_total",
            "Consumers cancelled by the broker (then re-established by the channel or watchdog)",
            registry=r,
        )

    def initialise(self, accounts: Iterable[tuple[str, str]], tenants: Iterable[str] = ()) -> None:
        """Create the label sets up front so dashboards and rate() see zeros, not gaps.
        `accounts` are (name, flow) pairs, `tenants` the names of the tenant tables."""
        for op in Operation:
            for status in Status:
                self.job_duration.labels(op.value, status.value)
            self.jobs.labels(op.value, Status.OK.value, "")
            self.jobs.labels(op.value, Status.NO_DATA.value, "")
            for code in ErrorCode:
                self.jobs.labels(op.value, Status.FAILED.value, code.value)
        for account, flow in accounts:
            for kind in REQUEST_KINDS:
                self.sf_requests.labels(account, kind, "200")
                self.sf_request_duration.labels(account, kind)
            for op in Operation:
                for reason in RETRY_REASONS:
                    self.sf_retries.labels(account, op.value, reason)
            self.token_request_duration.labels(account)
            self.composite_requests.labels(account)
            self.composite_subrequests.labels(account)
            self.api_calls_saved.labels(account)
            for mechanism in ("composite", "lookup", "shared_read"):
                self.api_calls_saved_by.labels(account, mechanism)
            self.merge_fallbacks.labels(account)
            for kind in ("daily", "concurrent", "reserve", "connections"):
                self.rate_limited.labels(account, kind)
            for outcome in ("ok", "error"):
                self.token_requests.labels(account, flow, outcome)
            self.token_invalidations.labels(account)
            self.lane_moves.labels(account)
            self.token_waits.labels(account)
            for outcome in ("ok", "error"):
                self.limits_probes.labels(account, outcome)
        for reason in REFUSAL_REASONS:
            self.invalid_requests.labels(reason)
            self.dead_lettered.labels(reason)
        for why in Reason:
            self.dead_lettered.labels(why.value)
        self.tenant_refusals.labels(Reason.NO_USER_ID.value, "")
        self.tenant_refusals.labels(Reason.UNKNOWN_USER.value, "")
        for tenant in tenants:
            self.tenant_refusals.labels(Reason.TENANT_MISMATCH.value, tenant)
            self.tenant_refusals.labels(Reason.FOREIGN_ACCOUNT.value, tenant)
            self.tenant_refusals.labels(Reason.FORBIDDEN_REPLY_TO.value, tenant)
        for destination in ("reply_to", "results_exchange"):
            self.results_published.labels(destination)
