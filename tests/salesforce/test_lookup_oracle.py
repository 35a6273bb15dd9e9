"""Proof by oracle (issue 28): randomized lookups run together (coalesced, merged into IN
queries, split back) and one by one (coalescing off) against the simulator give every job the
same answer: status, records, count, error. Values differ in case, hold quotes and backslashes,
are unknown, repeat, are ids in both lengths; several shapes run at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sfsim.testing import SimulatorClient

from tests.support.accounts import write_accounts
from tests.support.harness import Harness, open_harness
from tests.support.metrics import metric
from worker.contract import BlockResult
from worker.settings import Settings

EXAMPLES = 150
NAMES = ["O'Neil", "o'neil", "Back\\slash", 'Say "hi"', "Smith", "SMITH", "smith", "Ann-Marie"]
PHONES = ["+1 415 555 0100", "+1 415 555 0101", "555-0102", None, "+1 415 555 0100"]
SHAPES = {
    "phone, not selected": "SELECT Id, LastName FROM Contact WHERE Phone = :v",
    "phone, selected": "SELECT Id, Phone, LastName FROM Contact WHERE Phone = :v",
    "name and another condition": "SELECT Id, Phone FROM Contact WHERE LastName = :v "
    "AND Phone != null",
    "id": "SELECT Id, LastName FROM Contact WHERE Id = :v",
    "reference id": "SELECT Id FROM Contact WHERE AccountId = :v",
    "account name": "SELECT Id, Name FROM Account WHERE Name = :v",
}


@dataclass
class Data:
    contacts: list[str]  # ids (18 characters)
    accounts: list[str]


def variants(text: str) -> list[str]:
    return [text, text.lower(), text.upper(), text.swapcase()]


def values_for(data: Data) -> st.SearchStrategy[str]:
    """Few distinct values, each in several spellings: a batch often holds one value twice, or
    in two cases, which is where a split must follow Salesforce's rules."""
    texts = ["O'Neil", "Smith", "Back\\slash", 'Say "hi"', "+1 415 555 0100", "555-0102"]
    oddities = ["unknown", "O\\'Neil", "x'; --", "\\", "o'neil "]
    ids = [data.contacts[0], data.contacts[1], data.accounts[0]]
    return st.one_of(
        st.sampled_from(texts).flatmap(lambda t: st.sampled_from(variants(t))),
        st.sampled_from(oddities),
        st.sampled_from(ids).flatmap(
            lambda i: st.sampled_from([i, i[:15], i.lower(), i[:15].lower(), i.upper()])
        ),
        st.text(alphabet="aAbB'\\\" %_", min_size=1, max_size=3),
    )


@st.composite
def batches(draw: st.DrawFn, values: st.SearchStrategy[str]) -> list[tuple[str, str]]:
    """A batch of lookups on a few shapes and a few values, each value in any of its
    spellings: the same value in two cases in one batch is common, not a rare accident."""
    shapes = draw(st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=3))
    palette = draw(st.lists(values, min_size=1, max_size=4))
    size = draw(st.integers(min_value=2, max_value=20))
    return [
        (
            draw(st.sampled_from(shapes)),
            draw(st.sampled_from(palette).flatmap(lambda v: st.sampled_from(variants(v)))),
        )
        for _ in range(size)
    ]


def outcome(result: BlockResult) -> tuple[Any, ...]:
    return (
        result.status,
        result.count,
        result.records,
        result.error.code if result.error else None,
        [e.errorCode for e in result.error.salesforce_errors] if result.error else None,
    )


@pytest.fixture
async def pair(
    sf_settings: Settings, tmp_path: Path, simulator: SimulatorClient
) -> AsyncIterator[tuple[Harness, Harness]]:
    """Together: the default policy, identical reads not shared (so that repeated values
    exercise the split); alone: no coalescing, no sharing."""
    together = write_accounts(
        tmp_path / "t.toml", simulator.base_url, extra="share_reads = false\n"
    )
    alone = write_accounts(tmp_path / "a.toml", simulator.base_url, extra="share_reads = false\n")
    off = sf_settings.model_copy(update={"coalesce_wait_ms": 0})
    async with open_harness(sf_settings, together) as t, open_harness(off, alone) as a:
        yield t, a


async def seed(simulator: SimulatorClient) -> Data:
    accounts = await simulator.seed("Account", [{"Name": n} for n in NAMES])
    contacts = await simulator.seed(
        "Contact",
        [
            {"LastName": n, "Phone": PHONES[i % len(PHONES)], "AccountId": accounts[i % 3]}
            for i, n in enumerate(NAMES * 2)
        ],
    )
    return Data(contacts, accounts)


async def test_lookups_together_answer_exactly_as_alone(
    pair: tuple[Harness, Harness], simulator: SimulatorClient
) -> None:
    together, alone = pair
    data = await seed(simulator)
    loop = asyncio.get_running_loop()
    jobs_strategy = batches(values_for(data))
    checked: list[int] = []

    async def check(lookups: list[tuple[str, str]]) -> None:
        jobs = [
            {"operation": "search", "soql": SHAPES[shape], "params": {"v": value}}
            for shape, value in lookups
        ]
        batched = await asyncio.gather(*(together.run(**job) for job in jobs))
        for job, result in zip(jobs, batched, strict=True):
            single = await alone.run(**job)
            assert outcome(result) == outcome(single), job
        checked.append(len(jobs))

    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(lookups=jobs_strategy)
    def one(lookups: list[tuple[str, str]]) -> None:
        asyncio.run_coroutine_threadsafe(check(lookups), loop).result(30)

    await asyncio.to_thread(one)
    assert len(checked) >= EXAMPLES
    merged = metric(
        together.metrics,
        "sfworker_api_calls_saved_by_mechanism_total",
        account="main",
        mechanism="lookup",
    )
    print(f"\n{sum(checked)} lookups compared; {merged:g} calls saved by merging")
    assert merged > 0  # the lookups did travel merged
