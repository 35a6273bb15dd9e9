"""One operation's calls as the transport sees them: the operation's bookkeeping (`Call`), one
attempt of a call (its request, and its place in a Composite request when it travels in one),
and the answer a call gets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from worker.accounts import Account
from worker.contract import Operation
from worker.deadline import Deadline
from worker.memory import Hold
from worker.salesforce.composite import Subrequest
from worker.salesforce.errors import Classified
from worker.salesforce.lookups import Lookup
from worker.salesforce.tokens import AccessToken

BeforeSend = Callable[[], Awaitable[bool]]


@dataclass
class Call:
    """Bookkeeping of one operation: the calls it made and the last HTTP status seen."""

    account: Account
    operation: Operation
    deadline: Deadline
    attempts: int = 0
    retries: int = 0
    http_status: int | None = None
    idempotent: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)
    before_send: BeforeSend | None = None
    memory: Hold | None = None  # the job's share of the memory budget: what it reads counts


@dataclass(eq=False, slots=True)
class Attempt:
    """One attempt of a call: its request as it would be sent alone, and, when it waits to
    travel inside a Composite request (coalesce.py), what became of it there."""

    call: Call
    request: Subrequest
    abandoned: bool = False  # its job stopped waiting (deadline, cancel): leave it out
    committed: bool = False  # its request is on its way: the job cannot take it back
    unsent: Exception | None = None  # why it was left out of the request, as its job sees it
    trace: object = None  # its job's wait, as tracing sees it (observability/tracing.py)
    shapes: tuple[Lookup, ...] = ()  # the lookups it may merge with (merging.py)


@dataclass
class Response:
    """Salesforce's answer to one call (a request of its own, or one subrequest)."""

    status: int
    body: Any
    classified: Classified
    token: AccessToken


Answer = Response | Exception  # what an attempt gets: its answer, or what to raise
