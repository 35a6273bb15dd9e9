"""Wiring of one worker process: settings -> accounts -> Salesforce client -> RabbitMQ -> HTTP."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from worker.accounts import Account, Accounts, ConfigError, Flow, load_accounts
from worker.jobs import JobPipeline
from worker.memory import MemoryBudget, fit_deliveries
from worker.observability import http, tracing
from worker.observability.metrics import Metrics
from worker.runtime import amqp_decoding, brokers, heap
from worker.runtime.amqp_urls import login_user
from worker.runtime.consumer import Consumer
from worker.runtime.lanes import FairShare
from worker.runtime.orphans import report_orphans
from worker.runtime.service import RabbitService
from worker.runtime.tenant_queues import TenantQueues
from worker.runtime.topology import lane_queue, tenant_queue
from worker.salesforce.client import SalesforceClient
from worker.salesforce.connections import HEADROOM_PER_ACCOUNT, Connections
from worker.salesforce.http import create_session
from worker.salesforce.oauth import Grant, request_token
from worker.salesforce.reserve import ApiReserve
from worker.salesforce.tokens import Backoff, BoardTokenManager, TokenManager
from worker.settings import Settings
from worker.stores.eviction import EvictionCheck
from worker.stores.link import RedisLink, from_settings
from worker.stores.memory_results import MemoryResultStore
from worker.stores.outage_buffer import OutageBuffer, OutageMetrics
from worker.stores.redis_results import RedisResultStore
from worker.stores.redis_token_board import RedisTokenBoards
from worker.stores.results import ResultStore
from worker.stores.slot_leases import FleetSlots
from worker.stores.slots import LocalSlots, Slots
from worker.stores.spent_tokens import RefreshKeeper
from worker.stores.usage_board import LocalBoard, RedisUsageBoard

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024


def large_buffers_back_to_the_os() -> None:
    """Have glibc give every buffer of 128 KiB or more its own mapping, returned to the
    system when freed. By default glibc raises that threshold after the first such free, and
    results, pages and Salesforce bodies of a few hundred KB then come from the heap, whose
    holes between long-lived ones are not returned: 2,000 results of 210 KB during a Redis
    outage peaked at 330 to 515 MiB of RSS with about 130 MiB live, 290 MiB with the fixed
    threshold. MALLOC_MMAP_THRESHOLD_ in the environment, when set, wins."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        return  # not glibc (musl, macOS): its own allocator, nothing to set


def token_manager(
    session: aiohttp.ClientSession,
    settings: Settings,
    metrics: Metrics,
    link: RedisLink | None = None,
) -> TokenManager:
    async def fetch(account: Account, refresh_token: SecretStr | None) -> Grant:
        return await request_token(session, account, refresh_token=refresh_token)

    backoff = Backoff(settings.token_backoff_initial_seconds, settings.token_backoff_max_seconds)
    shared = None
    if link is not None:
        shared = RedisTokenBoards(
            link,
            lease=settings.token_lock_lease_seconds,
            refresh_ttl=settings.refresh_token_ttl_days * 86400,
            keeper=RefreshKeeper(),  # puts a lost refresh token back (stores/spent_tokens.py)
        )
    return BoardTokenManager(
        fetch, metrics, backoff, shared=shared, request_timeout=settings.token_timeout_seconds
    )


@dataclass
class Fleet:
    """What a process shares with the fleet (Redis), or keeps to itself (no Redis)."""

    link: RedisLink | None
    store: ResultStore
    slots: Slots
    reserve: ApiReserve

    @classmethod
    def create(cls, settings: Settings, metrics: Metrics) -> Fleet:
        memory = MemoryResultStore(
            settings.result_cache_size,
            settings.result_cache_ttl_seconds,
            max_bytes=settings.result_cache_max_bytes,
        )
        timing = {
            "share_every": settings.usage_share_seconds,
            "probe_every": settings.limits_probe_seconds,
        }
        if settings.redis_url is None:
            return cls(None, memory, LocalSlots(), ApiReserve(LocalBoard(), metrics, **timing))
        link = from_settings(settings, metrics)
        if not link.seal.enabled:
            log.warning(
                "SFWORKER_REDIS_PLAINTEXT=true: tokens, refresh tokens and results are stored in "
                "Redis in plain text"
            )
        unwritten = OutageBuffer(settings.redis_outage_buffer_bytes, OutageMetrics(metrics))
        return cls(
            link,
            RedisResultStore(link, memory, settings.result_cache_ttl_seconds, unwritten),
            FleetSlots(link),
            ApiReserve(RedisUsageBoard(link), metrics, **timing),
        )

    async def start(self) -> None:
        if self.link is not None:
            await self.link.start()
        await self.store.start()

    async def close(self) -> None:
        if isinstance(self.slots, FleetSlots):
            await self.slots.close()
        await self.reserve.close()
        await self.store.close()
        if self.link is not None:
            await self.link.close()


def _require_own_user(settings: Settings) -> None:
    """With tenant tables and the fair share, the lanes trust a moved copy only when RabbitMQ
    vouches it was the worker's own user that published it: that user must be known. A URL
    on EXTERNAL authentication (a client certificate) does not name it."""
    if settings.amqp_login_user:
        return
    if any(login_user(url) is None for url in settings.amqp_urls()):
        raise ConfigError(
            "SFWORKER_AMQP_URL logs in with a client certificate (auth=external) and "
            "SFWORKER_AMQP_LOGIN_USER is not set: with [tenants.NAME] tables and the fair share, "
            "the jobs the worker moves to the lanes would all be refused (FORBIDDEN_ACCOUNT). "
            "Set SFWORKER_AMQP_LOGIN_USER to the user RabbitMQ maps the worker's certificate "
            "to, or SFWORKER_FAIR_SHARE=false"
        )


class Worker:
    """One worker process's parts, started and stopped in order."""

    def __init__(self, settings: Settings, accounts: Accounts | None = None) -> None:
        large_buffers_back_to_the_os()
        self.accounts = accounts or load_accounts(
            settings.accounts_file, allow_insecure_localhost=settings.allow_insecure_localhost
        )
        if settings.fair_share and len(self.accounts) < 2:
            # One account has nobody to share with: one queue, as without the fair share.
            settings = settings.model_copy(update={"fair_share": False})
        try:  # the deliveries the prefetch windows may hold fit their share of the budget
            settings = fit_deliveries(settings, len(self.accounts), len(self.accounts.tenants))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.settings = settings
        self.budget = MemoryBudget.of(settings)
        # Each account's share of the HTTP pool (ConfigError when it cannot have one).
        self.connections = Connections.of(
            self.accounts.by_name, settings.http_pool_size, settings.http_connect_timeout_seconds
        )
        if self.connections.limited:
            log.warning(
                "some accounts get fewer connections to Salesforce than their max_concurrency: "
                "SFWORKER_HTTP_POOL_SIZE is shared out among the accounts",
                extra={"pool": settings.http_pool_size, "budgets": self.connections.limited},
            )
        for account in self.accounts.by_name.values():
            if account.instance_url.startswith("http://"):
                log.warning(
                    "account uses plain http (loopback only; the simulator)",
                    extra={"account": account.name, "instance_url": account.instance_url},
                )
        if self.accounts.strict:
            if settings.fair_share:
                _require_own_user(settings)
            log.info(
                "jobs are authenticated per tenant by their RabbitMQ user_id",
                extra={"tenants": sorted(self.accounts.tenants)},
            )
        else:
            # A warning where it matters: accounts of several tenants in one fleet.
            several = len({a.tenant for a in self.accounts.by_name.values()}) > 1
            log.log(
                logging.WARNING if several else logging.INFO,
                "jobs are not authenticated per tenant (no [tenants.NAME] table in the accounts "
                "file): whoever can publish a job may use any account",
            )
        self.metrics = Metrics()
        self.metrics.initialise(
            ((a.name, a.flow.value) for a in self.accounts.by_name.values()),
            tenants=self.accounts.tenants,
        )
        self.service = RabbitService(settings, self.metrics)
        self._session: aiohttp.ClientSession | None = None
        self._tokens: TokenManager | None = None
        self._client: SalesforceClient | None = None
        self.pipeline: JobPipeline | None = None
        self.fleet = Fleet.create(settings, self.metrics)
        if self.fleet.link is None:
            log.info(
                "no SFWORKER_REDIS_URL: this worker keeps its tokens, results and limits alone"
            )
        self._http: web.AppRunner | None = None
        self._lanes: FairShare | None = None
        self._tenants: TenantQueues | None = None
        self._tracer: tracing.Tracer = tracing.OFF
        self._gc_watch: heap.PauseWatch | None = None

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        self.metrics.memory_budget_used.set_function(lambda: self.budget.used)
        self.metrics.memory_budget_waiting.set_function(lambda: self.budget.waiting)
        # Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; before the HTTP session, which takes
        # its hooks.
        self._tracer = tracing.from_environment()
        tracing.install(self._tracer)
        amqp_decoding.install()  # pamqp's decoders, process-wide, before the first frame
        if s.http_port:
            app = http.create_app(self.metrics, self.service.readiness)
            self._http = await http.start(app, s.http_host, s.http_port)
        await self.fleet.start()
        if self.fleet.link is not None:  # ConfigError when Redis can evict the fleet's keys
            rotating = any(a.flow is Flow.REFRESH_TOKEN for a in self.accounts.by_name.values())
            check = EvictionCheck(self.fleet.link, allow=s.redis_allow_eviction, rotating=rotating)
            await check.at_start()
        self._session = create_session(s, HEADROOM_PER_ACCOUNT * len(self.accounts))
        self._tokens = token_manager(self._session, s, self.metrics, self.fleet.link)
        client = self._client = SalesforceClient(
            self._session,
            self._tokens,
            s,
            self.metrics,
            slots=self.fleet.slots,
            reserve=self.fleet.reserve,
            connections=self.connections,
        )
        # The org's usage before the first job (the gauges; the reserve), once per fleet start.
        self.fleet.reserve.prime(self.accounts.by_name.values())
        store = self.fleet.store
        self.pipeline = JobPipeline(self.accounts, client, store, s, self.metrics)
        await self.service.connect(s.startup_timeout_seconds)
        publisher = await self.service.open()
        if s.amqp_login_user:
            await brokers.check_login(self.service.connection, s.amqp_login_user)
        consumer = Consumer(self.pipeline, publisher, s, self.metrics, self.budget)
        if s.fair_share:
            # Lanes first: a job moved to one must find its consumer.
            self._lanes = FairShare(s, self.accounts, consumer, publisher, self.metrics)
            await self._lanes.start(self.service.connection, self.service.resize)
            await self.service.consume(self._lanes.route, self._lanes.window)
        else:
            await self.service.consume(consumer.handle)
        if self.accounts.strict and s.tenant_queues:
            self._tenants = TenantQueues(s, self.accounts, consumer)
            await self._tenants.start(self.service.connection)
        await report_orphans(
            self.service.connection, self.fleet.link, self._own_queues(), self.metrics
        )
        self._gc_watch = heap.PauseWatch(self.metrics.gc_pause)
        if s.gc_freeze:
            heap.settle()
        log.info("worker started", extra={"accounts": len(self.accounts)})

    def _own_queues(self) -> list[str]:
        """The lanes and tenant queues this worker declared."""
        s = self.settings
        lanes = [lane_queue(s, a) for a in self.accounts.by_name] if self._lanes else []
        tenants = [tenant_queue(s, t) for t in self.accounts.tenants] if self._tenants else []
        return lanes + tenants

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        drains = [self.service.drain(grace)]
        if self._lanes is not None:
            drains.append(self._lanes.drain(grace))
        if self._tenants is not None:
            drains.append(self._tenants.drain(grace))
        cancelled = sum(await asyncio.gather(*drains))
        await self.service.close()
        if self._client is not None:
            await self._client.close()
        if self._tokens is not None:
            await self._tokens.close()
        if self._session is not None:
            await self._session.close()
        await self.fleet.close()
        if self._http is not None:
            await self._http.cleanup()
        await self._tracer.shutdown()
        if self._gc_watch is not None:
            self._gc_watch.close()
            heap.thaw()
        if tracing.active is self._tracer:
            tracing.install(tracing.OFF)
        log.info("worker stopped", extra={"left_unacked": cancelled})

    async def run_until_stopped(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0 after draining) or a fatal consumer loss."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            stopped = asyncio.create_task(stop.wait())
            fatal = asyncio.create_task(self.service.fatal.wait())
            await asyncio.wait({stopped, fatal}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            fatal.cancel()
            log.info("shutting down", extra={"in_flight": self.service.in_flight})
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
        return self.service.exit_code
