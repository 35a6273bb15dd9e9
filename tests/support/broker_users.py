"""RabbitMQ users made for a test with `rabbitmqctl` (and deleted after it), with the
permissions of the broker recipe in deploy/README.md: one user per tenant's runtime, one for
the worker. The recipe's regexes are built here from the topology names, so the tests check
exactly what the docs tell an operator to run (tests/unit/test_docs.py compares them); the
flood section of bench/pipeline makes its users with them too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from worker.settings import Settings

RABBITMQCTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str


def literal(name: str) -> str:
    """`name` as a regex matching only itself (re.escape without escaping '-', for legibility)."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", name)


def tenant_permissions(settings: Settings, user: str) -> Permissions:
    """A tenant runtime's user: publish to the request exchange and the tenant exchange;
    declare and read its own reply queues (server-named `amq.gen-...` ones, which are exclusive
    to their connection, or named `<user>.<anything>`); nothing else."""
    own = rf"^(amq\.gen-.*|{literal(user)}\..*)$"
    exchanges = "|".join(literal(e) for e in (settings.request_exchange, settings.tenant_exchange))
    return Permissions(configure=own, write=f"^({exchanges})$", read=own)


@dataclass(frozen=True)
class TopicPermission:
    exchange: str
    write: str
    read: str


def tenant_topic_permission(settings: Settings) -> TopicPermission:
    """On the tenant exchange, a tenant's user publishes under its own routing key alone
    (`{username}` is RabbitMQ's, expanded to the user's name); it binds nothing."""
    key = literal(settings.request_routing_key)
    return TopicPermission(settings.tenant_exchange, rf"^{key}\.{{username}}$", "^$")


def worker_permissions(settings: Settings) -> Permissions:
    """The worker's user: its own topology (the accounts' lanes included), and replies and
    moves to lanes through the default exchange."""
    names = dict.fromkeys(
        (
            settings.request_exchange,
            settings.request_queue,
            settings.dead_letter_exchange,
            settings.dead_letter_queue,
            settings.results_exchange,
        )
    )
    # The accounts' lanes (fair share) and the tenants' queues: `<request queue>.lane.<account>`,
    # `<request queue>.tenant.<tenant>`, and the tenant exchange.
    lanes = rf"{literal(settings.request_queue)}\.lane\..*"
    tenant_queues = rf"{literal(settings.request_queue)}\.tenant\..*"
    names[settings.tenant_exchange] = None
    topology = "|".join([*(literal(name) for name in names), lanes, tenant_queues])
    return Permissions(
        configure=f"^({topology})$",
        write=rf"^({topology}|amq\.default)$",
        read=f"^({topology})$",
    )


def rabbitmqctl_lines(
    user: str, permissions: Permissions, vhost: str = "/", topic: TopicPermission | None = None
) -> list[str]:
    """The recipe as an operator types it (the password is asked for on the terminal)."""
    p = permissions
    lines = [
        f"rabbitmqctl add_user {user}",
        f"rabbitmqctl set_permissions -p {vhost} {user} '{p.configure}' '{p.write}' '{p.read}'",
    ]
    if topic is not None:
        lines.append(
            f"rabbitmqctl set_topic_permissions -p {vhost} {user} {topic.exchange} "
            f"'{topic.write}' '{topic.read}'"
        )
    return lines


def rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args],
        check=False,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=RABBITMQCTL_TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class BrokerUsers:
    """Creates users named `<name>-<run>` (unique per test) and deletes them afterwards, with
    `ctl` (the local `rabbitmqctl`, or one of a private node's: tests.cluster.helpers)."""

    amqp_url: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    made: list[str] = field(default_factory=list)
    ctl: Callable[..., str] = rabbitmqctl

    @property
    def vhost(self) -> str:
        path = urlsplit(self.amqp_url).path.lstrip("/")
        return path or "/"

    def name(self, base: str) -> str:
        return f"{base}-{self.run}"

    def add(self, user: str, permissions: Permissions, topic: TopicPermission | None = None) -> str:
        """Create `user` with `permissions` (and `topic`); returns its AMQP URL."""
        password = uuid.uuid4().hex
        self._create(user, password, permissions, topic)
        parts = urlsplit(self.amqp_url)
        netloc = f"{quote(user, safe='')}:{password}@{parts.hostname}:{parts.port or 5672}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def add_certificate_user(
        self, user: str, permissions: Permissions, topic: TopicPermission | None = None
    ) -> None:
        """Create `user` for a client certificate (EXTERNAL authentication): without a
        password, as RabbitMQ's passwords guide makes one (`add_user`, then
        `clear_password`), so the certificate is the only way in."""
        self._create(user, uuid.uuid4().hex, permissions, topic)
        self.ctl("clear_password", user)

    def _create(
        self, user: str, password: str, permissions: Permissions, topic: TopicPermission | None
    ) -> None:
        self.ctl("add_user", user, stdin=password + "\n")
        self.made.append(user)
        p = permissions
        self.ctl("set_permissions", "-p", self.vhost, user, p.configure, p.write, p.read)
        if topic is not None:
            self.ctl(
                "set_topic_permissions",
                "-p",
                self.vhost,
                user,
                topic.exchange,
                topic.write,
                topic.read,
            )

    def delete_all(self) -> None:
        """Delete every user made (RabbitMQ closes their connections)."""
        failures = []
        for user in self.made:
            try:
                self.ctl("delete_user", user)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failures.append(str(exc))
        self.made.clear()
        if failures:
            raise RuntimeError("; ".join(failures))


def require_rabbitmqctl(amqp_url: str) -> None:
    """Skip (fail in CI) unless `rabbitmqctl` can manage the broker the tests use."""
    import pytest  # here: bench/e2e/flood.py uses this module in a venv without pytest

    local = urlsplit(amqp_url).hostname in {"127.0.0.1", "localhost", "::1"}
    if not shutil.which("rabbitmqctl") or not local:
        if os.environ.get("CI"):
            pytest.fail("tenant tests need rabbitmqctl and the local broker")
        pytest.skip("needs rabbitmqctl and a local broker to create users")
