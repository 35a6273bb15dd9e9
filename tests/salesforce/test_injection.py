"""Acceptance 3.4: whatever a caller types, it reaches Salesforce as one literal equal to it.

Property-based: for any string, the statement the simulator receives parses (with the
simulator's own SOQL/SOSL parser) to exactly one literal, and that literal equals the value.
The simulator and the client run on an event loop in a background thread, so hypothesis drives
500+ real HTTP round trips per language without a new server per example."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sfsim.soql import parse_soql
from sfsim.sosl import parse_sosl
from sfsim.testing import SimulatorClient, running_simulator

from tests.support.accounts import write_accounts
from tests.support.harness import Harness, open_harness
from worker.settings import Settings

T = TypeVar("T")
NASTY = [
    "x' OR Name != '",
    "\\'",
    "\\",
    "%",
    "_",
    "50%_off\\%",
    "line1\nline2\r\n\ttab",
    "' OR '1'='1",
    "{!$Api.Session_ID}",
    'He said "hi"',
    "a) OR (b",
    "FIND {x} RETURNING Account",
    "? & | ! { } [ ] ( ) ^ ~ * : \\ \" ' + -",
    "AND OR NOT",
    "\u00e9\u00e8 \u4e2d\u6587 \U0001f600",
    ":other",
]


class Remote:
    """A simulator and a client living on a loop in another thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def start(self, tmp: Path) -> tuple[SimulatorClient, Harness]:
        sim = await self.stack.enter_async_context(running_simulator())
        path = write_accounts(tmp / "accounts.toml", sim.base_url)
        settings = Settings(http_port=0, allow_insecure_localhost=True)
        harness = await self.stack.enter_async_context(open_harness(settings, path))
        return sim, harness

    def close(self) -> None:
        self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Env:
    def __init__(self, remote: Remote, sim: SimulatorClient, harness: Harness) -> None:
        self.remote, self.sim, self.harness = remote, sim, harness

    def sent(self, **job: Any) -> str:
        """Run the job; return the one statement the simulator received for it."""

        async def go() -> str:
            await self.sim.reset_counters()
            result = await self.harness.run(**job)
            assert result.status.value in ("ok", "no_data"), result.error
            queries = (await self.sim.counters())["queries"]
            assert len(queries) == 1
            return str(queries[0])

        return self.remote.run(go())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    remote = Remote()
    sim, harness = remote.run(remote.start(tmp_path_factory.mktemp("injection")))
    yield Env(remote, sim, harness)
    remote.close()


text_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
)
fast = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@fast
@given(value=text_values)
@example(value="")
def test_soql_equality_literal(env: Env, value: str) -> None:
    for nasty in [value, *([] if value else NASTY)]:
        q = env.sent(
            operation="search",
            soql="SELECT Id FROM Contact WHERE LastName = :v",
            params={"v": nasty},
        )
        literals = parse_soql(q).literals()
        assert len(literals) == 1
        assert literals[0].kind == "string"
        assert literals[0].value == nasty


@fast
@given(value=text_values)
def test_soql_like_literal(env: Env, value: str) -> None:
    for nasty in [value, *([] if value else NASTY)]:
        q = env.sent(
            operation="search",
            soql="SELECT Id FROM Contact WHERE LastName LIKE :v",
            params={"v": nasty},
        )
        literals = parse_soql(q).literals()
        assert len(literals) == 1
        assert literals[0].in_like
        assert literals[0].like_literal_text == nasty


sosl_terms = text_values.filter(lambda s: len(s.strip()) >= 2)


@fast
@given(value=sosl_terms)
@example(value=NASTY[12])
def test_sosl_search_term(env: Env, value: str) -> None:
    q = env.sent(operation="search", sosl="FIND :v RETURNING Contact(Id)", params={"v": value})
    parsed = parse_sosl(q)
    assert len(parsed.terms) == 1
    assert parsed.terms[0].phrase
    assert parsed.terms[0].text == value
    assert parsed.literals() == []


@fast
@given(value=text_values)
def test_sosl_where_literal(env: Env, value: str) -> None:
    q = env.sent(
        operation="search",
        params={"t": "Lovelace", "v": value},
        sosl="FIND :t RETURNING Contact(Id WHERE LastName = :v)",
    )
    literals = parse_sosl(q).literals()
    assert len(literals) == 1
    assert literals[0].value == value
