"""The runtime's client: publish block jobs to sfworker and await their results.

    from worker.client import BlockClient
    from worker.contract import Status

    async with BlockClient.connect("amqp://runtime:secret@rabbitmq:5672/") as client:
        result = await client.call(
            {"v": 1, "job_id": "call-7f3a-search", "operation": "search",
             "soql": "SELECT Id, Name FROM Contact WHERE Phone = :ani",
             "params": {"ani": "+1 415 555 0123"}, "timeout_ms": 5000},
            wait=7,
        )
        if result.status is Status.OK:
            ...

What it does for every job (contracts/asyncapi.yaml describes the same on the wire):
- publishes it persistent, with publisher confirms, to the request exchange (`salesforce.blocks`,
  routing key `salesforce.blocks`), or with `tenant_queue=True` (strict tenant mode) to the
  tenant exchange (`salesforce.blocks.tenants`, routing key `salesforce.blocks.<user>`), which
  feeds its tenant's own queue (a full one is `QueueFull`); `content_type` application/json,
  `message_id` = the job id,
  `correlation_id` (the job id unless given), `reply_to` = this client's reply queue, `timestamp`
  (the worker counts the job's budget from it when the job has no `sent_at`), and `user_id` = the
  user the connection logged in as (with a client certificate, EXTERNAL authentication, the URL
  does not say: give it as `login_user`), so that RabbitMQ vouches for who published the job;
  and the W3C trace context of the caller's current OpenTelemetry span (headers `traceparent`,
  `tracestate`) when opentelemetry-api is installed and a span is current;
- collects results on a private exclusive queue (gone with the connection), or on a named durable
  queue (`reply_queue=...`) that keeps results across a restart of the caller or the broker;
- returns them as `worker.contract.BlockResult`, matched by correlation id; one that arrives
  before its caller asks for it (publish many, then collect) is kept until asked, up to
  `max_unclaimed` results;
- with `worker_user` (the RabbitMQ user the workers connect as), accepts only replies whose
  `user_id` is that user (RabbitMQ vouches for it): anything else some other publisher put in
  the reply queue is dropped and counted in `foreign_replies`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from enum import Enum
from typing import Any, Final, Literal

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, FieldValue
from pydantic import BaseModel, ValidationError

from worker.contract import BlockResult
from worker.observability.tracing import outgoing_headers
from worker.runtime.amqp_urls import login_user as url_login_user
from worker.runtime.reach import Unreachable, connect_amqp

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "salesforce.blocks"
DEFAULT_ROUTING_KEY = "salesforce.blocks"
DEFAULT_TENANT_EXCHANGE = "salesforce.blocks.tenants"

__all__ = [
    "CONNECTION_USER",
    "BlockClient",
    "ClientClosed",
    "InvalidResult",
    "PublishFailed",
    "QueueFull",
    "UnknownUser",
    "Unreachable",
    "connection_user",
]

Job = Mapping[str, Any] | BaseModel | bytes


def _trace_headers(given: Mapping[str, str] | None) -> dict[str, FieldValue] | None:
    """The headers a job goes with: those given, else the caller's current trace context."""
    headers: dict[str, FieldValue] = {}
    headers.update(given if given is not None else outgoing_headers())
    return headers or None


class InvalidResult(ValueError):
    """A reply that is not a contract v1 result (`raw` holds its decoded body, if any)."""

    def __init__(self, correlation_id: str, reason: str, raw: Any = None) -> None:
        super().__init__(f"result {correlation_id!r} is not a v1 result: {reason}")
        self.correlation_id = correlation_id
        self.raw = raw


class PublishFailed(RuntimeError):
    """RabbitMQ did not take the job (no such exchange, unroutable, refused, no confirm)."""


class QueueFull(PublishFailed):
    """The broker refused the job (a negative confirm): its tenant's queue holds as many jobs as
    it may (`SFWORKER_TENANT_QUEUE_MAX_LENGTH`). The workers are behind on this tenant's jobs;
    other tenants are not affected. Try again later, or answer the caller without it."""


class UnknownUser(ValueError):
    """The client must know its RabbitMQ user (to stamp `user_id`, or for its tenant's routing
    key) and cannot tell it: the URL logs in with a client certificate (EXTERNAL
    authentication), which names the user, and no `login_user` was given."""


class ClientClosed(RuntimeError):
    """The client was closed while a result was awaited."""


class _Sender(Enum):
    CONNECTION_USER = "connection user"
    CLIENT_SETTING = "client setting"


CONNECTION_USER: Final = _Sender.CONNECTION_USER
"""`user_id` of published jobs: the user the client's connection authenticated as."""
CLIENT_SETTING: Final = _Sender.CLIENT_SETTING
"""`user_id` of one publish: whatever the client was created with."""

UserId = str | None | Literal[_Sender.CONNECTION_USER]


async def connection_user(channel: AbstractChannel, login_user: str | None = None) -> str:
    """The user a channel's connection logged in as: `login_user` when given, else the AMQP
    URL's, else RabbitMQ's default `guest`. UnknownUser on EXTERNAL authentication without
    `login_user` (the certificate names the user, and only the broker knows how it maps it)."""
    underlay = await channel.get_underlay_channel()
    user = url_login_user(underlay.connection.url, login_user)
    if user is None:
        raise UnknownUser(
            "the AMQP URL logs in with a client certificate (auth=external), which names the "
            "RabbitMQ user: give the client login_user=<the user RabbitMQ maps the certificate "
            "to> (SFWORKER_AMQP_LOGIN_USER for sfworker submit)"
        )
    return user


def _body(job: Job) -> tuple[bytes, str | None]:
    if isinstance(job, bytes):
        return job, None
    if isinstance(job, BaseModel):
        data: Any = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    else:
        data = dict(job)
    job_id = data.get("job_id")
    return orjson.dumps(data), job_id if isinstance(job_id, str) and job_id else None


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class BlockClient:
    """Publishes block jobs and matches their results by correlation id.

    `user_id`: the AMQP `user_id` property stamped on every job: by default the user the
    channel's connection logged in as (RabbitMQ refuses any other unless the user is an
    impersonator); None sends no user_id (tests of raw input).

    `worker_user`: the RabbitMQ user the workers publish results as. When given, a reply is
    accepted only if its `user_id` is that user; others are dropped (counted in
    `foreign_replies`, logged). None (the client does not know it): every reply is accepted.

    `login_user`: the RabbitMQ user the connection logs in as, when its URL does not say (a
    client certificate: EXTERNAL authentication); `start()` raises UnknownUser without it when
    the client needs its user (to stamp `user_id`, or for a tenant queue's routing key).
    """

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        user_id: UserId = CONNECTION_USER,
        exchange: str = DEFAULT_EXCHANGE,
        routing_key: str = DEFAULT_ROUTING_KEY,
        publish_timeout: float = 10.0,
        max_unclaimed: int = 10_000,
        worker_user: str | None = None,
        tenant_exchange: str | None = None,
        login_user: str | None = None,
    ) -> None:
        self._channel = channel
        self._login_user = login_user or None
        # A tenant's own queue (strict mode): the tenant exchange, under the routing key
        # `<routing_key>.<the connection's user>`, set at start().
        self._tenant_exchange = tenant_exchange
        self._user_id = user_id
        self._worker_user = worker_user or None
        self.foreign_replies = 0  # replies dropped: not published by worker_user
        self.user = ""  # the connection's user, known after start()
        self._exchange_name = exchange
        self._routing_key = routing_key
        self._publish_timeout = publish_timeout
        self._max_unclaimed = max_unclaimed
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Correlation ids someone is awaiting in raw_result now; a result for any other id
        # (published, nobody asking yet) is kept in _unclaimed for when they ask.
        self._claimed: set[str] = set()
        # Results that arrived with nobody waiting (e.g. on a durable queue after a restart).
        self._unclaimed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        amqp_url: str,
        *,
        reply_queue: str | None = None,
        exchange: str = DEFAULT_EXCHANGE,
        routing_key: str = DEFAULT_ROUTING_KEY,
        stamp_user_id: bool = True,
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        worker_user: str | None = None,
        tenant_queue: bool = False,
        tenant_exchange: str = DEFAULT_TENANT_EXCHANGE,
        login_user: str | None = None,
    ) -> AsyncIterator[BlockClient]:
        """Connect, start consuming results, yield the client; close everything on exit.
        `tenant_queue`: publish to the tenant's own request queue (strict tenant mode): the
        tenant exchange, routing key `<routing_key>.<the connection's user>`. `login_user`: that
        user, when the URL does not name it (`amqps://...?auth=external&certfile=...`).

        Raises `worker.runtime.reach.Unreachable` (one line naming host:port) when RabbitMQ
        cannot be reached or refuses the login; UnknownUser on a certificate URL without
        `login_user`."""
        connection = await connect_amqp(amqp_url, within=connect_timeout)
        async with connection:
            channel = await connection.channel(on_return_raises=True)
            client = cls(
                channel,
                user_id=CONNECTION_USER if stamp_user_id else None,
                exchange=exchange,
                routing_key=routing_key,
                publish_timeout=publish_timeout,
                worker_user=worker_user,
                tenant_exchange=tenant_exchange if tenant_queue else None,
                login_user=login_user,
            )
            await client.start(reply_queue)
            try:
                yield client
            finally:
                await client.close()

    @property
    def channel(self) -> AbstractChannel:
        return self._channel

    @property
    def reply_queue(self) -> str:
        """The queue results come back to (its name goes out as `reply_to`)."""
        if self._queue is None:
            raise ClientClosed("start() the client first")
        return self._queue.name

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener` with every decoded result as it arrives (before it is matched)."""
        self._listeners.append(listener)

    async def start(self, reply_queue: str | None = None) -> None:
        """Consume results: on a private exclusive queue, or on the named durable one.
        UnknownUser when the client needs its user and cannot tell it (see `login_user`)."""
        try:
            self.user = await connection_user(self._channel, self._login_user)
        except UnknownUser:
            if self._user_id is CONNECTION_USER or self._tenant_exchange is not None:
                raise
            self.user = ""  # stamps no user_id, publishes to the shared request queue
        if self._user_id is CONNECTION_USER:
            self._user_id = self.user
        if self._tenant_exchange is not None:
            self._exchange_name = self._tenant_exchange
            self._routing_key = f"{self._routing_key}.{self.user}"
            self._tenant_exchange = None
        if reply_queue:
            self._queue = await self._channel.declare_queue(
                reply_queue, durable=True, timeout=self._publish_timeout
            )
        else:
            self._queue = await self._channel.declare_queue(
                exclusive=True, auto_delete=True, timeout=self._publish_timeout
            )
        self._consumer_tag = await self._queue.consume(self._on_result, timeout=10)

    async def _on_result(self, message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False):
            if self._worker_user is not None and message.user_id != self._worker_user:
                self.foreign_replies += 1
                log.warning(
                    "reply dropped: not published by the workers' RabbitMQ user",
                    extra={
                        "user_id": message.user_id or "",
                        "worker_user": self._worker_user,
                        "correlation_id": message.correlation_id or "",
                    },
                )
                return
            data = _decode(message.body)
            correlation = message.correlation_id or (data or {}).get("job_id") or ""
            decoded = data if data is not None else {"_undecodable": message.body[:200].hex()}
            for listener in self._listeners:
                listener(decoded)
            future = self._waiting.pop(str(correlation), None)
            if future is not None and not future.done():
                future.set_result(decoded)
            if str(correlation) in self._claimed:
                return
            self._unclaimed[str(correlation)] = decoded
            while len(self._unclaimed) > self._max_unclaimed:
                self._unclaimed.popitem(last=False)

    async def publish(
        self,
        job: Job,
        *,
        correlation_id: str | None = None,
        expect_reply: bool = True,
        message_id: str | None = None,
        timestamp: float | None = None,
        user_id: str | Literal[_Sender.CLIENT_SETTING] | None = CLIENT_SETTING,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Publish one job (a dict, a contract model, or raw bytes) and wait for RabbitMQ's
        confirm. Returns the correlation id its result will carry. `user_id` overrides the
        client's for this job (None: none at all). `headers` (e.g. `traceparent`) go with the
        job; without them, the current OpenTelemetry span's trace context does."""
        body, job_id = _body(job)
        stamped: str | None
        if user_id is not CLIENT_SETTING:
            stamped = user_id
        elif self._user_id is CONNECTION_USER:
            stamped = self.user = await connection_user(self._channel, self._login_user)
            self._user_id = stamped
        else:
            stamped = self._user_id
        correlation = correlation_id or job_id or uuid.uuid4().hex
        if expect_reply:
            self._waiting[correlation] = asyncio.get_running_loop().create_future()
        message = aio_pika.Message(
            body=body,
            content_type="application/json",
            message_id=message_id or job_id,
            correlation_id=correlation,
            reply_to=self.reply_queue if expect_reply else None,
            timestamp=time.time() if timestamp is None else timestamp,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=stamped,
            headers=_trace_headers(headers),
        )
        try:
            exchange = await self._channel.get_exchange(self._exchange_name, ensure=False)
            async with asyncio.timeout(self._publish_timeout):
                await exchange.publish(message, routing_key=self._routing_key)
        except BaseException as exc:
            future = self._waiting.pop(correlation, None)
            if future is not None:
                future.cancel()
            if isinstance(exc, aio_pika.exceptions.DeliveryError) and not isinstance(
                exc, aio_pika.exceptions.PublishError
            ):
                raise QueueFull(
                    f"RabbitMQ refused the job (a negative confirm): the queue behind "
                    f"{self._exchange_name!r} (key {self._routing_key!r}) is full"
                ) from None
            if isinstance(exc, aio_pika.exceptions.DeliveryError):
                raise PublishFailed(
                    f"exchange {self._exchange_name!r} routed the job nowhere (key "
                    f"{self._routing_key!r}): has a worker declared its queue?"
                ) from None
            if isinstance(exc, aio_pika.exceptions.ChannelNotFoundEntity):
                raise PublishFailed(
                    f"exchange {self._exchange_name!r} does not exist: start a worker first "
                    "(it declares the topology)"
                ) from None
            if isinstance(exc, TimeoutError):
                raise PublishFailed(
                    f"RabbitMQ did not confirm the job within {self._publish_timeout:g} s"
                ) from None
            raise
        return correlation

    def awaiting(self, correlation_id: str) -> bool:
        """True while a published job's result has not arrived yet."""
        return correlation_id in self._waiting

    async def raw_result(self, correlation_id: str, wait: float) -> dict[str, Any]:
        """The decoded result body for `correlation_id`, waiting at most `wait` seconds
        (TimeoutError)."""
        unclaimed = self._unclaimed.pop(correlation_id, None)
        if unclaimed is not None:
            return unclaimed
        future = self._waiting.get(correlation_id)
        if future is None:
            if self._queue is None:
                raise ClientClosed("the client is closed")
            future = asyncio.get_running_loop().create_future()
            self._waiting[correlation_id] = future
        self._claimed.add(correlation_id)
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(future)
        except TimeoutError:
            # A late result then goes to the (bounded) unclaimed results, not to a dead waiter.
            if self._waiting.get(correlation_id) is future:
                del self._waiting[correlation_id]
            raise
        except asyncio.CancelledError:
            if future.cancelled():
                raise ClientClosed("the client was closed while waiting") from None
            raise
        finally:
            self._claimed.discard(correlation_id)

    async def result(self, correlation_id: str, wait: float) -> BlockResult:
        """The result for `correlation_id` as a `BlockResult`; TimeoutError after `wait` s,
        InvalidResult when the reply is not a v1 result."""
        raw = await self.raw_result(correlation_id, wait)
        try:
            return BlockResult.model_validate(raw)
        except ValidationError as exc:
            raise InvalidResult(correlation_id, str(exc.errors()[0]["msg"]), raw) from None

    async def call(self, job: Job, wait: float = 30.0) -> BlockResult:
        """Publish `job` and return its result (TimeoutError after `wait` seconds)."""
        return await self.result(await self.publish(job), wait)

    async def close(self) -> None:
        """Stop consuming; anyone still waiting gets ClientClosed."""
        queue, self._queue = self._queue, None
        if queue is not None and self._consumer_tag is not None and not self._channel.is_closed:
            with suppress(aio_pika.exceptions.AMQPError, TimeoutError, ConnectionError):
                await queue.cancel(self._consumer_tag, timeout=5)
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
