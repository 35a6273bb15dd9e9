"""All mutable simulator state in one place, so a reset is one assignment."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from .auth import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REFRESH_TOKEN,
    DEFAULT_USERNAME,
    AuthState,
    Client,
)
from .cursors import CursorStore
from .faults import FaultBook
from .ids import IdFactory, to_18
from .records import RecordStore
from .schema import Schema, default_schema
from .users import Users

__all__ = [
    "Counters",
    "Latency",
    "Limits",
    "SimulatorState",
]

ORG_ID_15 = "00D5g000004SiMu"


@dataclass
class Latency:
    ms: int = 0
    jitter_ms: int = 0
    token_ms: int = 20


@dataclass
class Limits:
    daily_max: int = 100_000
    used: int = 0
    per_app_used: Counter[str] = field(default_factory=Counter)
    login_rate_per_hour: int = 3600
    # Largest page of a query answer: Salesforce may return fewer records per page than the
    # batchSize asked for (wide records); lower it to make every large answer span several pages.
    query_batch_max: int = 2000


@dataclass
class Counters:
    token_requests: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    subrequests: Counter[str] = field(default_factory=Counter)  # inside composite requests
    queries: list[str] = field(default_factory=list)
    responses: Counter[str] = field(default_factory=Counter)  # REST answers by HTTP status
    oauth_events: Counter[str] = field(default_factory=Counter)  # revocations, rejections
    in_flight: int = 0
    max_concurrency: int = 0
    pkce_verified: int = 0

    def enter(self) -> None:
        self.in_flight += 1
        self.max_concurrency = max(self.max_concurrency, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def snapshot(self, limits: Limits) -> dict[str, Any]:
        return {
            "token_requests": dict(self.token_requests),
            "token_requests_total": sum(self.token_requests.values()),
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "subrequests": dict(self.subrequests),
            "responses": dict(self.responses),
            "oauth_events": dict(self.oauth_events),
            "max_concurrency": self.max_concurrency,
            "pkce_verified": self.pkce_verified,
            "in_flight": self.in_flight,
            "queries": list(self.queries),
            "api_usage": {"used": limits.used, "max": limits.daily_max},
        }


def _org_id() -> str:
    return to_18(ORG_ID_15)


@dataclass
class SimulatorState:
    schema: Schema = field(default_factory=default_schema)
    ids: IdFactory = field(default_factory=IdFactory)
    org_id: str = field(default_factory=_org_id)
    latency: Latency = field(default_factory=Latency)
    limits: Limits = field(default_factory=Limits)
    counters: Counters = field(default_factory=Counters)
    faults: FaultBook = field(default_factory=FaultBook)
    users: Users = field(default_factory=Users)
    session_timeout_seconds: float = 7200.0
    records: RecordStore = field(init=False)
    auth: AuthState = field(init=False)
    cursors: CursorStore = field(init=False)

    def __post_init__(self) -> None:
        self.records = RecordStore(self.schema, self.ids)
        self.auth = AuthState(self.ids, self.org_id)
        self.cursors = CursorStore(self.ids)
        self.auth.set_client(
            Client(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, usernames=[DEFAULT_USERNAME]),
            [DEFAULT_REFRESH_TOKEN],
        )

    def reset(self) -> None:
        """Back to a fresh state in place (the app holds this object). In-flight stays counted."""
        in_flight = self.counters.in_flight
        self.faults.release_all()  # nothing stays held by a rule that no longer exists
        fresh = SimulatorState()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        self.counters.in_flight = in_flight

    def reset_counters(self) -> None:
        in_flight = self.counters.in_flight
        self.counters = Counters(in_flight=in_flight, max_concurrency=in_flight)
