"""The batcher alone (coalesce.py): when a group leaves, who goes alone, cancellation, close."""

from __future__ import annotations

import asyncio

import pytest

from worker.accounts import Account, Flow
from worker.deadline import Deadline
from worker.observability.metrics import Metrics
from worker.salesforce import composite
from worker.salesforce.coalesce import Coalescer, CoalescerClosed

ACCOUNT = Account("main", "https://x.my.salesforce.com", "https://x/token", Flow.JWT_BEARER, "id")


class Recorder:
    """A `together` that records the groups it was given and answers each item with itself."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.groups: list[list[str]] = []
        self.hold = hold

    async def __call__(self, account: Account, items: list[str]) -> list[str]:
        self.groups.append(items)
        if self.hold is not None:
            await self.hold.wait()
        return [f"answer {item}" for item in items]


def far() -> Deadline:
    return Deadline.after(60)


async def test_a_full_group_leaves_at_once_without_waiting() -> None:
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(30.0, together, Metrics())  # a 30 s wait
    async with asyncio.timeout(5):
        answers = await asyncio.gather(
            *(coalescer.join(ACCOUNT, f"q{i}", deadline=far(), query=True) for i in range(5))
        )
    assert answers == [f"answer q{i}" for i in range(5)]
    assert together.groups == [[f"q{i}" for i in range(5)]]


async def test_25_calls_fill_a_group_and_the_26th_starts_the_next() -> None:
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(0.05, together, Metrics())
    answers = await asyncio.gather(
        *(coalescer.join(ACCOUNT, f"r{i}", deadline=far(), query=False) for i in range(27))
    )
    assert [len(group) for group in together.groups] == [25, 2]
    assert answers == [f"answer r{i}" for i in range(27)]


async def test_a_call_alone_is_handed_back() -> None:
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(0.01, together, Metrics())
    assert await coalescer.join(ACCOUNT, "solo", deadline=far(), query=False) is None
    assert together.groups == []


async def test_a_quiet_account_does_not_wait() -> None:
    together = Recorder()
    loop = asyncio.get_running_loop()
    started = loop.time()
    alone: Coalescer[str, str] = Coalescer(30.0, together, Metrics())  # a 30 s wait
    assert await alone.join(ACCOUNT, "first", deadline=far(), query=False) is None
    # Calls ready at the same moment on a quiet account still go together, at once.
    burst: Coalescer[str, str] = Coalescer(30.0, together, Metrics())
    answers = await asyncio.gather(
        *(burst.join(ACCOUNT, f"b{i}", deadline=far(), query=False) for i in range(3))
    )
    assert answers == ["answer b0", "answer b1", "answer b2"]
    assert loop.time() - started < 5


async def test_a_busy_account_waits_for_company() -> None:
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(0.2, together, Metrics())
    assert await coalescer.join(ACCOUNT, "before", deadline=far(), query=False) is None
    first = asyncio.create_task(coalescer.join(ACCOUNT, "a", deadline=far(), query=False))
    await asyncio.sleep(0.05)  # well inside the 200 ms wait
    second = await coalescer.join(ACCOUNT, "b", deadline=far(), query=False)
    assert (await first, second) == ("answer a", "answer b")
    assert together.groups == [["a", "b"]]


async def test_a_pressed_deadline_shortens_the_wait() -> None:
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(30.0, together, Metrics())
    assert await coalescer.join(ACCOUNT, "before", deadline=far(), query=False) is None  # busy
    loop = asyncio.get_running_loop()
    started = loop.time()
    # 30 s of wait, but the deadline is 30.2 s away: it leaves keeping 30 s of its budget.
    assert await coalescer.join(ACCOUNT, "x", deadline=Deadline.after(30.2), query=False) is None
    assert loop.time() - started < 5


async def test_disabled_per_account_or_with_no_wait() -> None:
    together = Recorder()
    off = Account(
        "off", "https://x.my.salesforce.com", "https://x/t", Flow.JWT_BEARER, "id", coalesce=False
    )
    coalescer: Coalescer[str, str] = Coalescer(30.0, together, Metrics())
    assert not coalescer.enabled(off)
    assert await coalescer.join(off, "x", deadline=far(), query=False) is None
    no_wait: Coalescer[str, str] = Coalescer(0.0, together, Metrics())
    assert not no_wait.enabled(ACCOUNT)


async def test_a_cancelled_call_leaves_its_group() -> None:
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(0.2, together, Metrics())
    assert await coalescer.join(ACCOUNT, "before", deadline=far(), query=False) is None  # busy
    gone = asyncio.create_task(coalescer.join(ACCOUNT, "gone", deadline=far(), query=False))
    kept = [
        asyncio.create_task(coalescer.join(ACCOUNT, f"k{i}", deadline=far(), query=False))
        for i in range(2)
    ]
    await asyncio.sleep(0)
    gone.cancel()
    assert await asyncio.gather(*kept) == ["answer k0", "answer k1"]
    assert together.groups == [["k0", "k1"]]


async def test_close_sends_waiting_calls_alone_and_fails_those_in_flight() -> None:
    hold = asyncio.Event()
    together = Recorder(hold)
    coalescer: Coalescer[str, str] = Coalescer(30.0, together, Metrics())
    in_flight = [
        asyncio.create_task(coalescer.join(ACCOUNT, f"q{i}", deadline=far(), query=True))
        for i in range(5)
    ]
    while not together.groups:
        await asyncio.sleep(0)
    waiting = asyncio.create_task(coalescer.join(ACCOUNT, "w", deadline=far(), query=False))
    await asyncio.sleep(0)
    await coalescer.close()
    assert await waiting is None
    for task in in_flight:
        with pytest.raises(CoalescerClosed):
            await task


@pytest.mark.parametrize(
    ("url", "params", "body"),
    [
        ("/sobjects/Contact/Ext_Id__c/%40%7Bc0.id%7D", None, b'{"A__c":1}'),
        ("/query", {"q": "SELECT Id FROM Contact WHERE Name = '@{c0.id}'"}, None),
        ("/sobjects/Case", None, b'{"Subject":"\\u0040{c0.id}"}'),
    ],
)
def test_a_reference_in_decoded_text_keeps_a_call_out_of_composite(
    url: str, params: dict[str, str] | None, body: bytes | None
) -> None:
    """Issue 16.3: `@{` percent-encoded in the URL, in a parameter, or JSON-escaped in the
    body is still a reference to Salesforce."""
    method = "GET" if body is None else "PATCH"
    sub = composite.Subrequest(method, ACCOUNT.api_base + url, params, body)
    assert not composite.supports(ACCOUNT, sub)
