"""Reaching the services a command needs, with one-line failures that name what was tried.

A command that cannot reach RabbitMQ, Redis or Salesforce raises `Unreachable`; `sfworker` prints
its message on one line and exits 1. Messages name the host and port, never a user or password.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379, "http": 80}


class Unreachable(Exception):
    """A service could not be used; the message says what was tried and what to do."""


def endpoint(url: str) -> str:
    """`host:port` of a URL, without credentials (`?` when the URL cannot be read)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 443)
    except ValueError:
        return "?"
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer"
    args = getattr(exc, "args", ())
    code = args[0] if args and isinstance(args[0], int) else getattr(exc, "errno", None)
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(code, int) and code < 0:  # getaddrinfo errors
        return "host not found"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


async def connect_amqp(url: str, *, within: float = 10.0) -> AbstractConnection:
    """An aio-pika connection to the first node that answers of a comma-separated URL list
    (SFWORKER_AMQP_URL may name a cluster's nodes), or Unreachable naming each host:port."""
    urls = [u.strip() for u in url.split(",") if u.strip()] or [url]
    failures: list[Unreachable] = []
    for one in urls:
        try:
            return await _connect_one(one, within=within)
        except Unreachable as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    raise Unreachable(
        "no RabbitMQ node of SFWORKER_AMQP_URL answers: "
        + "; ".join(str(f).split(": start")[0] for f in failures)
    )


async def _connect_one(url: str, *, within: float) -> AbstractConnection:
    where = endpoint(url)
    # aiormq logs a failed connect at ERROR before raising; the exception says it all.
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        async with asyncio.timeout(within + 1):
            return await aio_pika.connect(url, timeout=within)
    except aiormq.exceptions.ProbableAuthenticationError:
        raise Unreachable(
            f"RabbitMQ at {where} refused the login: check the user and password of the AMQP URL "
            "(SFWORKER_AMQP_URL)"
        ) from None
    except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
        raise Unreachable(
            f"cannot reach RabbitMQ at {where} ({_reason(exc)}): start RabbitMQ there, or set "
            "SFWORKER_AMQP_URL to a broker that runs"
        ) from None
    finally:
        quiet.setLevel(level)
