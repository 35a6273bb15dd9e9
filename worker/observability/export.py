"""Ended spans, batched and posted over OTLP/HTTP (protobuf) on the worker's event loop.

What the SDK's `BatchSpanProcessor` and `OTLPSpanExporter` do, read from the same standard
variables, without their thread: each span is encoded when it ends (otlp.py), queued (at most
`OTEL_BSP_MAX_QUEUE_SIZE`; past it spans are dropped and counted in a warning), and a task
posts `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` of them at once, when that many wait or every
`OTEL_BSP_SCHEDULE_DELAY` ms. The request goes to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`) with `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
`_TIMEOUT` (seconds, as the Python SDK reads it), `_COMPRESSION` (gzip, deflate) and
`_CERTIFICATE`, `_CLIENT_KEY`, `_CLIENT_CERTIFICATE`; 429, 502, 503, 504 and lost connections
are retried with backoff within the timeout, as the SDK's exporter does.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp

from worker.observability import otlp
from worker.observability.spans import Span

log = logging.getLogger(__name__)

_RETRYABLE = frozenset({429, 502, 503, 504})
_CONTENT_TYPE = "application/x-protobuf"


def _get(env: Mapping[str, str], name: str) -> str | None:
    """`OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("ignoring a malformed tracing variable", extra={"variable": name})
        return default
    return value if value > 0 else default


def _headers(raw: str | None) -> dict[str, str]:
    """`key=value,key2=value2`, URL-encoded, as the SDK parses it."""
    headers: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


@dataclass(frozen=True)
class ExportConfig:
    endpoint: str = "http://localhost:4318/v1/traces"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0  # seconds, per export
    compression: str | None = None  # gzip, deflate
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    schedule_delay: float = 5.0  # seconds
    max_queue: int = 2048
    batch: int = 512

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> ExportConfig:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
            endpoint = base + ("v1/traces" if base.endswith("/") else "/v1/traces")
        compression = (_get(env, "COMPRESSION") or "none").strip().lower()
        if compression not in ("gzip", "deflate", "none"):
            log.warning("unknown OTLP compression; sending uncompressed")
            compression = "none"
        max_queue = int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        return cls(
            endpoint=endpoint,
            headers=_headers(_get(env, "HEADERS")),
            timeout=_number(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 0)
            or _number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0),
            compression=None if compression == "none" else compression,
            certificate=_get(env, "CERTIFICATE"),
            client_key=_get(env, "CLIENT_KEY"),
            client_certificate=_get(env, "CLIENT_CERTIFICATE"),
            schedule_delay=_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
            max_queue=max_queue,
            batch=min(max_queue, int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.endpoint.startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=self.certificate)
        if self.client_certificate:
            context.load_cert_chain(self.client_certificate, self.client_key)
        return context


class SpanExporter:
    """The queue of ended spans (encoded) and the task that posts them."""

    def __init__(self, config: ExportConfig, resource: bytes, scope: bytes) -> None:
        self._config = config
        self._resource = resource
        self._scope = scope
        self._ssl: ssl.SSLContext | bool = config.ssl_context() or True
        self._queue: deque[bytes] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._dropped = 0
        self._closed = False

    def add(self, span: Span) -> None:
        """A span ended: encoded now, posted with the next batch."""
        if self._closed:
            return
        if len(self._queue) >= self._config.max_queue:
            self._dropped += 1
            return
        self._queue.append(otlp.encode_span(span))
        if self._task is None:
            self._start()
        elif len(self._queue) >= self._config.batch and self._wake is not None:
            self._wake.set()

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (yet): the spans wait for one, or for shutdown
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="otlp-export")

    async def _run(self) -> None:
        """Until shutdown: a batch when one is full, or every schedule delay; at shutdown,
        what is left."""
        assert self._wake is not None
        while True:
            if not self._closed:
                try:
                    async with asyncio.timeout(self._config.schedule_delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            while self._queue:
                await self._export_batch()
                if not self._closed and len(self._queue) < self._config.batch:
                    break
            if self._closed:
                return

    async def _export_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._config.batch))]
        if self._dropped:
            log.warning("spans dropped: the export queue was full", extra={"spans": self._dropped})
            self._dropped = 0
        try:
            await self._post(otlp.request(self._resource, self._scope, batch), len(batch))
        except Exception:  # never let the export task die: the next batch may go through
            log.exception("exporting spans failed")

    async def _post(self, body: bytes, count: int) -> None:
        config = self._config
        headers = {**config.headers, "Content-Type": _CONTENT_TYPE}
        if config.compression == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        elif config.compression == "deflate":
            body = zlib.compress(body)
            headers["Content-Encoding"] = "deflate"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.timeout
        delay = 1.0
        while True:
            failure: str
            try:
                async with asyncio.timeout_at(deadline):
                    async with self._session.post(
                        config.endpoint, data=body, headers=headers, ssl=self._ssl
                    ) as response:
                        await response.read()
                        if response.status < 300:
                            return
                        failure = f"HTTP {response.status}"
                        retryable = response.status in _RETRYABLE
            except TimeoutError:
                failure, retryable = "timed out", False
            except aiohttp.ClientError as exc:
                failure, retryable = type(exc).__name__, True
            if not retryable or loop.time() + delay >= deadline:
                log.warning("spans not exported", extra={"spans": count, "error": failure})
                return
            await asyncio.sleep(delay)
            delay *= 2

    async def shutdown(self, *, within: float) -> None:
        """Post what is queued (for at most `within` seconds), then stop."""
        self._closed = True
        try:
            async with asyncio.timeout(within):
                if self._task is not None and self._wake is not None:
                    self._wake.set()
                    await self._task  # drains the queue, then returns
                while self._queue:  # spans ended while no loop ran
                    await self._export_batch()
        except TimeoutError:
            log.warning("spans not exported within the shutdown time; dropped")
            self._queue.clear()
        finally:
            if self._session is not None:
                await self._session.close()
