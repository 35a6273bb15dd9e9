"""Every private part of a library the worker relies on, by name (issue 25, point 6).

The worker reaches under the public API of a few libraries where it must (for speed, or where
the library offers no hook): redis-py's connection streams (stores/pipe.py), aio-pika's
connection-close hook (runtime/brokers.py), aiormq's frame clock, blocked flag, reader task and
channel tables (runtime/linkwatch.py, runtime/service.py), pamqp's decoders
(runtime/amqp_decoding.py), aiohttp's silent retry flag (salesforce/http.py) and the logging
module's caller lookup (observability/logging.py). pyproject.toml bounds these libraries to the
majors CI tested; when one is upgraded anyway, this test names what moved, where the worker
would otherwise hang, stop failing over or quietly lose a guard (several of these are read with
a `getattr` default, so nothing else would fail).
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import struct
from typing import Any

import aio_pika
import aiohttp
import aiormq
import pytest
import redis.asyncio as aioredis
from pamqp import commands, common, decode
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)

from worker.runtime import amqp_decoding, linkwatch


def _has(owner: Any, name: str, used_by: str) -> None:
    where = owner.__name__ if isinstance(owner, type) else type(owner).__name__
    assert hasattr(owner, name), f"{where}.{name} is gone: {used_by} relies on it"


def _source_mentions(function: Any, text: str, used_by: str) -> None:
    name = getattr(function, "__qualname__", repr(function))
    assert text in inspect.getsource(function), f"{name} no longer uses {text}: {used_by}"


# --- redis-py (stores/pipe.py) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/none.sock"]
)
def test_redis_pools_name_the_class_and_arguments_of_their_connections(url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(url)
    _has(pool, "connection_class", "stores/pipe.py (opens its own connection)")
    _has(pool, "connection_kwargs", "stores/pipe.py (opens its own connection)")
    assert issubclass(pool.connection_class, AbstractConnection)
    assert isinstance(pool.connection_kwargs, dict)


@pytest.mark.parametrize("kind", [Connection, SSLConnection, UnixDomainSocketConnection])
def test_redis_connections_keep_their_streams_where_the_pipe_reads_them(
    kind: type[AbstractConnection],
) -> None:
    used_by = "stores/pipe.py (reads and writes the connection's streams)"
    for name in ("_reader", "_writer", "_close", "connect", "disconnect"):
        _has(kind, name, used_by)
    assert inspect.iscoroutinefunction(kind.connect)
    assert not inspect.iscoroutinefunction(kind._close), "_close must close without waiting"
    conn = Connection(host="127.0.0.1", port=1)
    assert (conn._reader, conn._writer) == (None, None)  # instance attributes, set by connect
    _source_mentions(Connection._connect, "self._reader", used_by)
    _source_mentions(Connection._connect, "self._writer", used_by)
    _source_mentions(AbstractConnection._close, "self._writer.close()", used_by)


# --- aio-pika and aiormq (runtime/brokers.py, runtime/linkwatch.py, runtime/service.py) -----


def test_aio_pika_hands_its_connection_close_hook_to_the_transport() -> None:
    used_by = "runtime/brokers.py (the next broker address after a lost connection)"
    _has(aio_pika.RobustConnection, "_on_connection_close", used_by)
    hook = aio_pika.RobustConnection._on_connection_close
    assert inspect.iscoroutinefunction(hook)
    assert list(inspect.signature(hook).parameters) == ["self", "closing"]
    _source_mentions(aio_pika.Connection.connect, "self._on_connection_close", used_by)
    _has(aio_pika.RobustConnection, "close_called", used_by)


async def test_aiormq_connections_keep_the_state_the_link_watch_reads() -> None:
    used_by = "runtime/linkwatch.py (silent and blocked links)"
    underlay = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
    for name in (linkwatch._LAST_FRAME, linkwatch._UNBLOCKED, "heartbeat_timeout", "is_closed"):
        _has(underlay, name, used_by)
    assert isinstance(getattr(underlay, linkwatch._LAST_FRAME), float)
    assert isinstance(getattr(underlay, linkwatch._UNBLOCKED), asyncio.Event)
    # Set when it connects: the reader task the watch cancels for a stuck link.
    _source_mentions(aiormq.Connection.connect, "self._reader_task =", used_by)
    # aio-pika's way down to it (linkwatch.underlay_of).
    assert "connection" in aio_pika.abc.UnderlayConnection.__annotations__
    _source_mentions(aio_pika.Connection.connect, "self.transport =", used_by)


def test_aiormq_channels_keep_their_consumers_and_cancel_callbacks() -> None:
    used_by = "runtime/service.py (the consumer watchdog)"
    _source_mentions(aiormq.Channel.__init__, "self.consumers", used_by)
    _source_mentions(aiormq.Channel.__init__, "self.on_consumer_cancel_callbacks", used_by)


def test_aio_pika_robust_connections_keep_their_reconnect_interval() -> None:
    used_by = "runtime/service.py (reconnection backoff)"
    _source_mentions(aio_pika.RobustConnection.__init__, "self.reconnect_interval", used_by)


# --- pamqp (runtime/amqp_decoding.py) --------------------------------------------------------


def test_pamqp_decodes_through_the_tables_the_worker_replaces() -> None:
    used_by = "runtime/amqp_decoding.py (odd message properties)"
    for name in ("timestamp", "shortstr", "table"):
        assert name in decode.METHODS, f"pamqp decode.METHODS[{name!r}] is gone: {used_by}"
    for tag in (b"T", b"F"):
        assert tag in decode.TABLE_MAPPING, f"pamqp decode.TABLE_MAPPING[{tag!r}]: {used_by}"
    for name in ("timestamp", "short_str", "field_table", "embedded_value", "by_type"):
        _has(decode, name, used_by)
    for name in ("timestamp", "byte", "integer"):
        _has(common.Struct, name, used_by)
    _source_mentions(decode.by_type, "METHODS", used_by)
    _source_mentions(decode.embedded_value, "TABLE_MAPPING", used_by)


def test_odd_properties_decode_once_the_worker_installed_its_decoders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the replaced decoders are for, through pamqp's own unmarshalling: a content
    header whose timestamp lies past the year 9999 and whose short strings are not UTF-8.
    pamqp's tables are as before afterwards (the worker installs its decoders at start-up)."""
    monkeypatch.setattr(amqp_decoding, "_installed", False)
    for name in ("timestamp", "shortstr", "table"):
        monkeypatch.setitem(decode.METHODS, name, decode.METHODS[name])
    for tag in (b"T", b"F"):
        monkeypatch.setitem(decode.TABLE_MAPPING, tag, decode.TABLE_MAPPING[tag])
    for name in ("timestamp", "short_str", "field_table"):
        monkeypatch.setattr(decode, name, getattr(decode, name))
    sent = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    properties = commands.Basic.Properties(
        timestamp=sent, correlation_id="ab", headers={"kk": 1, "at": sent}
    )
    raw = properties.marshal()
    flags, data = struct.unpack(">H", raw[:2])[0], raw[2:]
    good, bad = struct.pack(">Q", int(sent.timestamp())), struct.pack(">Q", 3 * 10**14)
    data = (
        data.replace(good, bad).replace(b"\x02ab", b"\x02\xff\xfe").replace(b"\x02kk", b"\x02\xffk")
    )
    amqp_decoding.install()
    decoded = commands.Basic.Properties()
    decoded.unmarshal(flags, data)
    assert decoded.timestamp is None
    assert decoded.correlation_id == "\ufffd\ufffd"
    assert decoded.headers == {"\ufffdk": 1, "at": None}


# --- aiohttp (salesforce/http.py) ------------------------------------------------------------


async def test_aiohttp_sessions_keep_their_silent_retry_flag() -> None:
    used_by = "salesforce/http.py (no silent second send of a request)"
    async with aiohttp.ClientSession() as session:
        _has(session, "_retry_connection", used_by)
    _source_mentions(aiohttp.ClientSession._request, "self._retry_connection", used_by)


# --- the standard library (observability/logging.py) ------------------------------------------


def test_logging_keeps_its_caller_lookup_switch() -> None:
    _has(logging, "_srcfile", "observability/logging.py (no stack walk per log record)")
