"""Traces through the real queue: the worker exports OTLP/HTTP to a receiver the test runs, and
the spans say where one job's time went (queue, token, slot, coalescing, Salesforce, publish)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sfsim.testing import SimulatorClient

from tests.runtime.helpers import sfworker
from tests.support.accounts import write_accounts
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.settings import make_settings, settings_env
from worker.app import Worker
from worker.observability import http
from worker.observability.logging import JsonFormatter
from worker.settings import Settings

API_QUERY = "/services/data/v{}/query"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with otlp_receiver() as running:
        yield running


@asynccontextmanager
async def traced_worker(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, **env: str
) -> AsyncIterator[Worker]:
    """A worker exporting to `receiver`; every span is exported when the block ends."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sfworker-test")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    worker = Worker(settings)
    await worker.start()
    # The worker reads each account's /limits at start, which takes a token first. Let that
    # read end, then drop the token (as a 401 would): the traced jobs then really wait for one,
    # instead of racing the start-up read for it.
    await worker.fleet.reserve.primed()
    tokens = worker._tokens
    assert tokens is not None
    for account in worker.accounts.by_name.values():
        cached = tokens.cached(account)
        if cached is not None:
            await tokens.invalidate(account, cached)
    try:
        yield worker
    finally:
        await worker.stop()  # flushes the spans to the receiver


class Caller:
    """Publishes jobs with chosen AMQP headers and keeps each result message whole."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, settings: Settings) -> None:
        self._channel = channel
        self._settings = settings
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self.replies: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}
        self._arrived = asyncio.Condition()

    async def start(self) -> None:
        self._queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with self._arrived:
            self.replies[message.correlation_id or ""] = message
            self._arrived.notify_all()

    async def call(
        self, job: dict[str, Any], headers: dict[str, str] | None = None, wait: float = 20
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Publish `job`; its result body and the result message's headers."""
        assert self._queue is not None
        exchange = await self._channel.get_exchange(self._settings.request_exchange)
        await exchange.publish(
            aio_pika.Message(
                json.dumps(job).encode(),
                content_type="application/json",
                correlation_id=job["job_id"],
                message_id=job["job_id"],
                reply_to=self._queue.name,
                headers=dict(headers or {}),
            ),
            routing_key=self._settings.request_routing_key,
        )
        async with asyncio.timeout(wait), self._arrived:
            await self._arrived.wait_for(lambda: job["job_id"] in self.replies)
        reply = self.replies[job["job_id"]]
        return json.loads(reply.body), dict(reply.headers or {})


@pytest.fixture
async def caller(amqp: aio_pika.abc.AbstractRobustConnection, settings: Settings) -> Caller:
    made = Caller(await amqp.channel(), settings)
    await made.start()
    return made


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """(header, trace id, parent span id) of a caller's span."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def header_ids(headers: dict[str, Any]) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of a result's traceparent."""
    value = headers["traceparent"]
    text = value.decode() if isinstance(value, bytes) else str(value)
    _version, trace_id, span_id, flags = text.split("-")
    return trace_id, span_id, bool(int(flags, 16) & 1)


def consumer_span(receiver: OtlpReceiver, job_id: str) -> ReceivedSpan:
    [span] = [
        s
        for s in receiver.spans
        if s.kind == "consumer" and s.attributes.get("sfworker.job.id") == job_id
    ]
    return span


def no_leaks(receiver: OtlpReceiver, *secrets_: str) -> None:
    texts = [text for span in receiver.spans for text in span.strings()]
    names = [span.name for span in receiver.spans]
    for secret in secrets_:
        assert not [t for t in texts + names if secret in t], f"{secret!r} is in a span"


async def scrape_openmetrics(worker: Worker) -> str:
    """GET /metrics as Prometheus asks for exemplars: in the OpenMetrics format."""
    app = http.create_app(worker.metrics, lambda: {"ok": True})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert response.content_type == "application/openmetrics-text"
        return await response.text()


@contextmanager
def job_log_lines() -> Iterator[list[dict[str, Any]]]:
    """The worker's log lines as its JSON formatter writes them, while the block runs."""
    lines: list[dict[str, Any]] = []
    formatter = JsonFormatter()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Keep(level=logging.INFO)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def test_a_job_with_a_traceparent_continues_its_trace_down_to_salesforce_and_back(
    settings: Settings,
    receiver: OtlpReceiver,
    caller: Caller,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    phone = "+1 415 555 7613"
    [contact] = await simulator.seed("Contact", [{"LastName": "Quixotic", "Phone": phone}])
    header, trace_id, parent_id = traceparent()
    search = {
        "v": 1,
        "job_id": "traced-search",
        "operation": "search",
        "soql": "SELECT Id, LastName FROM Contact WHERE Phone = :ani",
        "params": {"ani": phone},
    }
    get = {"v": 1, "job_id": "traced-get", "operation": "get", "sobject": "Contact", "id": contact}
    async with traced_worker(settings, receiver, monkeypatch) as worker:
        with job_log_lines() as lines:
            result, headers = await caller.call(search, {"traceparent": header})
            got, _ = await caller.call(get, {"traceparent": header})
        exposition = await scrape_openmetrics(worker)
    assert result["status"] == "ok"
    assert result["records"][0]["Id"] == contact
    assert got["status"] == "ok"

    job = consumer_span(receiver, "traced-search")
    assert (job.name, job.trace_id, job.parent_id) == (
        f"process {settings.request_queue}",
        trace_id,
        parent_id,
    )
    assert job.attributes["messaging.system"] == "rabbitmq"
    assert job.attributes["messaging.destination.name"] == settings.request_queue
    assert job.attributes["sfworker.operation"] == "search"
    assert job.attributes["sfworker.account"] == "main"
    assert job.attributes["sfworker.tenant"] == "acme"
    assert job.attributes["sfworker.status"] == "ok"
    assert job.attributes["sfworker.attempts"] == 1
    assert job.attributes["sfworker.queue.wait_ms"] >= 0

    children = {span.name: span for span in receiver.children(job)}
    version = settings.api_version if hasattr(settings, "api_version") else None
    query = next(s for s in children.values() if s.name.startswith("GET ") and "/query" in s.name)
    if version is not None:
        assert query.name == f"GET {API_QUERY.format(version)}"
    assert query.kind == "client"
    assert query.attributes["http.request.method"] == "GET"
    assert query.attributes["http.response.status_code"] == 200
    assert query.attributes["url.template"].endswith("/query")
    token_wait = children["token wait"]
    [token_call] = receiver.children(token_wait)
    assert token_call.name == "POST /services/oauth2/token"
    publish = next(s for s in children.values() if s.kind == "producer")
    assert publish.name.startswith("publish ")

    # The result goes back in the same trace, its parent the worker's publish span.
    assert header_ids(headers) == (trace_id, publish.span_id, True)

    # The get's record id is in its path, never in its span.
    getting = consumer_span(receiver, "traced-get")
    [get_call] = [s for s in receiver.children(getting) if s.kind == "client"]
    assert get_call.name.endswith("/sobjects/Contact/{id}")
    no_leaks(receiver, phone, "415 555", "Quixotic", contact)

    # Log lines of the job carry its trace; the latency histograms point at it (OpenMetrics).
    per_job = [line for line in lines if line.get("job_id") == "traced-search"]
    assert per_job
    assert {(line["trace_id"], line["span_id"]) for line in per_job} == {(trace_id, job.span_id)}
    assert f'trace_id="{trace_id}"' in exposition
    duration = [
        line
        for line in exposition.splitlines()
        if line.startswith("sfworker_job_duration_seconds_bucket") and "trace_id" in line
    ]
    assert duration
    calls = [
        line
        for line in exposition.splitlines()
        if line.startswith("sfworker_salesforce_request_duration_seconds_bucket")
        and "trace_id" in line
    ]
    assert calls


async def test_a_job_without_trace_context_starts_a_trace(
    settings: Settings,
    receiver: OtlpReceiver,
    caller: Caller,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with traced_worker(settings, receiver, monkeypatch):
        result, headers = await caller.call(
            {"v": 1, "job_id": "rootless", "operation": "search", "soql": "SELECT Id FROM Case"}
        )
    assert result["status"] == "no_data"
    job = consumer_span(receiver, "rootless")
    assert job.parent_id == ""
    assert job.resource["service.name"] == "sfworker-test"
    trace_id, span_id, sampled = header_ids(headers)
    assert (trace_id, sampled) == (job.trace_id, True)
    assert span_id in {s.span_id for s in receiver.children(job) if s.kind == "producer"}


async def test_a_retry_is_two_http_spans(
    settings: Settings,
    receiver: OtlpReceiver,
    caller: Caller,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unavailable = [{"errorCode": "SERVER_UNAVAILABLE", "message": "busy"}]
    await simulator.add_fault(status=503, body=unavailable, route="query", count=1)
    header, trace_id, _parent = traceparent()
    async with traced_worker(settings, receiver, monkeypatch):
        result, _ = await caller.call(
            {"v": 1, "job_id": "retried", "operation": "search", "soql": "SELECT Id FROM Case"},
            {"traceparent": header},
        )
    assert (result["status"], result["attempts"]) == ("no_data", 2)
    job = consumer_span(receiver, "retried")
    assert job.trace_id == trace_id
    queries = [s for s in receiver.children(job) if s.kind == "client" and "/query" in s.name]
    assert [s.attributes["http.response.status_code"] for s in queries] == [503, 200]
    assert queries[0].error
    assert [name for name, _ in job.events] == ["retry"]
    assert job.attributes["sfworker.attempts"] == 2


async def test_a_composite_request_is_one_span_linked_to_every_job_it_carries(
    settings: Settings,
    receiver: OtlpReceiver,
    caller: Caller,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = await simulator.seed("Contact", [{"LastName": f"Linked{i}"} for i in range(12)])
    await simulator.set_latency(50)
    jobs = [
        {"v": 1, "job_id": f"carried-{i}", "operation": "get", "sobject": "Contact", "id": rid}
        for i, rid in enumerate(ids)
    ]
    async with traced_worker(settings, receiver, monkeypatch):
        answers = await asyncio.gather(
            *(caller.call(job, {"traceparent": traceparent()[0]}) for job in jobs)
        )
    assert [body["status"] for body, _ in answers] == ["ok"] * len(jobs)
    composites = receiver.named("salesforce composite")
    assert composites, "no Composite request was sent"
    job_spans = {job["job_id"]: consumer_span(receiver, job["job_id"]) for job in jobs}
    by_id = {span.span_id: span for span in job_spans.values()}
    carried = [
        span for span in job_spans.values() if "sfworker.composite.span_id" in span.attributes
    ]
    assert sum(len(c.links) for c in composites) == len(carried) >= 2
    for composite in composites:
        linked = [by_id[span_id] for _trace, span_id in composite.links]
        assert {(s.trace_id, s.span_id) for s in linked} == set(composite.links)
        for job in linked:
            # Each job says which Composite request carried it (attribute and link).
            assert job.attributes["sfworker.composite.span_id"] == composite.span_id
            assert (composite.trace_id, composite.span_id) in job.links
        [post] = [s for s in receiver.children(composite) if s.name.endswith("/composite")]
        assert (post.kind, post.attributes["http.request.method"]) == ("client", "POST")
        assert post.attributes["http.response.status_code"] == 200
    no_leaks(receiver, *ids)


async def test_a_wait_for_the_accounts_concurrency_cap_is_a_span(
    amqp_url: str,
    names: dict[str, str],
    settings: Settings,  # owns the topology teardown
    receiver: OtlpReceiver,
    caller: Caller,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Two jobs of an account capped at one call at a time: the second waits for the first's
    slot, and its span says so (coalescing and read sharing off, so they do not travel
    together nor share one request)."""
    await simulator.set_latency(60)
    path = write_accounts(
        tmp_path / "cap1.toml",
        simulator.base_url,
        extra="max_concurrency = 1\nshare_reads = false\n",
    )
    capped = make_settings(amqp_url, names, path, coalesce_wait_ms=0)
    jobs = [
        {"v": 1, "job_id": f"capped-{i}", "operation": "search", "soql": "SELECT Id FROM Case"}
        for i in range(3)
    ]
    async with traced_worker(capped, receiver, monkeypatch):
        await caller.call(jobs[0])  # the token, fetched once
        answers = await asyncio.gather(*(caller.call(job) for job in jobs[1:]))
    assert [body["status"] for body, _ in answers] == ["no_data", "no_data"]
    waits = [
        wait
        for job_id in ("capped-1", "capped-2")
        for wait in receiver.children(consumer_span(receiver, job_id))
        if wait.name == "slot wait"
    ]
    assert len(waits) == 1
    assert (waits[0].end_ns - waits[0].start_ns) / 1e6 >= 30  # most of the other's 60 ms call


async def test_the_sampling_decision_of_the_caller_is_honoured(
    settings: Settings,
    receiver: OtlpReceiver,
    caller: Caller,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sampled, sampled_trace, _ = traceparent(sampled=True)
    dropped, dropped_trace, _ = traceparent(sampled=False)
    job = {"v": 1, "operation": "search", "soql": "SELECT Id FROM Case"}
    async with traced_worker(
        settings,
        receiver,
        monkeypatch,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    ):
        _, kept_headers = await caller.call({**job, "job_id": "sampled"}, {"traceparent": sampled})
        _, dropped_headers = await caller.call(
            {**job, "job_id": "not-sampled"}, {"traceparent": dropped}
        )
        _, root_headers = await caller.call({**job, "job_id": "root"})
    # Sampled by the caller: kept although the worker's own ratio is 0.
    assert consumer_span(receiver, "sampled").trace_id == sampled_trace
    assert header_ids(kept_headers)[2]
    # Not sampled by the caller, or no caller at all with ratio 0: nothing exported, but the
    # result still carries the trace (not sampled) back.
    assert receiver.in_trace(dropped_trace) == []
    assert header_ids(dropped_headers)[0::2] == (dropped_trace, False)
    root_trace, _span, root_sampled = header_ids(root_headers)
    assert not root_sampled
    assert receiver.in_trace(root_trace) == []
    assert {s.trace_id for s in receiver.spans} == {sampled_trace}


async def test_tracing_off_passes_the_trace_context_through(
    worker: Worker, caller: Caller, simulator: SimulatorClient
) -> None:
    """Without an endpoint nothing is exported, yet the job's trace context still reaches its
    log lines and comes back with its result."""
    header, trace_id, parent_id = traceparent()
    with job_log_lines() as lines:
        result, headers = await caller.call(
            {"v": 1, "job_id": "untraced", "operation": "search", "soql": "SELECT Id FROM Case"},
            {"traceparent": header, "tracestate": "vendor=opaque"},
        )
    assert result["status"] == "no_data"
    assert header_ids(headers) == (trace_id, parent_id, True)
    assert headers["tracestate"] in ("vendor=opaque", b"vendor=opaque")
    per_job = [line for line in lines if line.get("job_id") == "untraced"]
    assert per_job
    assert all(line["trace_id"] == trace_id for line in per_job)


async def test_submit_with_two_variables_shows_the_block_as_one_trace(
    settings: Settings,
    receiver: OtlpReceiver,
    simulator: SimulatorClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """What docs/observability.md tells a new user: set the endpoint (and a service name) for
    the worker and for `sfworker submit`; the block is one trace from the command down."""
    async with traced_worker(settings, receiver, monkeypatch):
        env = settings_env(settings)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        env["OTEL_SERVICE_NAME"] = "ivr-runtime"
        done = await sfworker(
            "submit", "--operation", "search", "--soql", "SELECT Id FROM Case", "--json", env=env
        )
        assert done.returncode == 0, done.stderr
    [root] = receiver.named("sfworker submit")
    assert root.parent_id == ""
    assert root.resource["service.name"] == "ivr-runtime"
    [job] = [s for s in receiver.spans if s.kind == "consumer"]
    assert (job.trace_id, job.parent_id) == (root.trace_id, root.span_id)
    assert job.resource["service.name"] == "sfworker-test"
