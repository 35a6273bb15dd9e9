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


# --- the adaptive policy (issue 28) ---------------------------------------------------------


def adaptive(together: Recorder) -> Coalescer[str, str]:
    return Coalescer(0.01, together, Metrics(), adaptive=True, max_wait_seconds=5.0)


async def a_request(coalescer: Coalescer[str, str], seconds: float) -> None:
    """One request of the account, in flight for `seconds` (what the transport wraps)."""
    with coalescer.flight(ACCOUNT):
        await asyncio.sleep(seconds)


async def test_adaptive_calls_of_a_quiet_account_go_at_once() -> None:
    """A call every 150 ms, requests of 50 ms: company within a round trip is unlikely, so no
    call waits for it (a wait would last until a partner came, up to 100 ms)."""
    together = Recorder()
    coalescer = adaptive(together)
    loop = asyncio.get_running_loop()
    for i in range(6):
        started = loop.time()
        assert await coalescer.join(ACCOUNT, f"c{i}", deadline=far(), query=False) is None
        assert loop.time() - started < 0.02
        await a_request(coalescer, 0.05)
        await asyncio.sleep(0.1)
    assert together.groups == []


async def test_adaptive_calls_ready_during_a_request_leave_together_when_it_returns() -> None:
    """Group commit: with a request in flight and calls coming every 5 ms (company likely),
    the calls that became ready meanwhile leave in one request as soon as it returns."""
    together = Recorder()
    coalescer = adaptive(together)
    await a_request(coalescer, 0.1)  # the account's round trip: 100 ms
    flying = asyncio.create_task(a_request(coalescer, 0.1))
    joins = []
    for i in range(4):
        joins.append(
            asyncio.create_task(coalescer.join(ACCOUNT, f"g{i}", deadline=far(), query=False))
        )
        await asyncio.sleep(0.005)
    loop = asyncio.get_running_loop()
    await flying
    returned = loop.time()
    answers = await asyncio.gather(*joins)
    assert loop.time() - returned < 0.02  # at once when the request returned
    # The first call had no pace to go by yet: it went at once, alone.
    assert answers == [None, "answer g1", "answer g2", "answer g3"]
    assert together.groups == [["g1", "g2", "g3"]]


async def test_adaptive_groups_leave_with_half_a_round_trip_of_calls() -> None:
    """Under load the group does not wait for the request in flight once it holds the calls
    of half a round trip: calls every 8 ms, round trip 100 ms -> groups of about 7 (not the
    25 that fill a Composite request, nor a wait of twice the round trip)."""
    together = Recorder()
    coalescer = adaptive(together)
    await a_request(coalescer, 0.1)
    flying = asyncio.create_task(a_request(coalescer, 1.0))  # never returns in time
    loop = asyncio.get_running_loop()
    waits: dict[int, float] = {}

    async def timed(i: int) -> None:
        started = loop.time()
        await coalescer.join(ACCOUNT, f"n{i}", deadline=far(), query=False)
        waits[i] = loop.time() - started

    joins = []
    for i in range(40):
        joins.append(asyncio.create_task(timed(i)))
        await asyncio.sleep(0.008)
    await asyncio.gather(*joins)
    # Half a round trip's calls fill a group in about 50 ms: the calls of filled groups do not
    # wait the 200 ms (twice the round trip) that the last, unfilled one may.
    assert max(waits[i] for i in range(30)) < 0.12
    assert 4 <= max(len(g) for g in together.groups) <= 12
    flying.cancel()


async def test_adaptive_never_waits_past_the_deadline_less_a_round_trip() -> None:
    together = Recorder()
    coalescer = adaptive(together)
    await a_request(coalescer, 0.05)
    flying = asyncio.create_task(a_request(coalescer, 2.0))
    busy = []
    for i in range(3):  # the account is busy
        await asyncio.sleep(0.001)
        busy.append(
            asyncio.create_task(coalescer.join(ACCOUNT, f"x{i}", deadline=far(), query=False))
        )
    await asyncio.sleep(0.001)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pressed = Deadline.after(0.08)
    await coalescer.join(ACCOUNT, "pressed", deadline=pressed, query=False)
    # It leaves a round trip (50 ms) before its deadline, not after twice a round trip.
    assert loop.time() - started < 0.06
    flying.cancel()
    await coalescer.close()
    await asyncio.gather(*busy, return_exceptions=True)


async def test_adaptive_a_pair_lingers_for_a_third_call() -> None:
    """A call every 40 ms, round trip 100 ms: a pair could leave when its second call comes,
    but it lingers (here 30 ms) for the call that comes meanwhile: three calls, one request;
    the second call waited the linger and no more."""
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(
        0.01, together, Metrics(), adaptive=True, max_wait_seconds=5.0, linger_seconds=0.03
    )
    await a_request(coalescer, 0.1)
    loop = asyncio.get_running_loop()
    joined: dict[str, float] = {}
    left: dict[str, float] = {}

    async def timed(name: str) -> str | None:
        joined[name] = loop.time()
        answer = await coalescer.join(ACCOUNT, name, deadline=far(), query=False)
        left[name] = loop.time()
        return answer

    for i in range(3):  # the pace: company likely within a round trip
        assert await timed(f"p{i}") in (None, f"answer p{i}")
        await asyncio.sleep(0.04)
    together.groups.clear()
    first = asyncio.create_task(timed("a"))
    await asyncio.sleep(0.04)
    second = asyncio.create_task(timed("b"))
    await asyncio.sleep(0.02)
    third = asyncio.create_task(timed("c"))
    assert await asyncio.gather(first, second, third) == ["answer a", "answer b", "answer c"]
    assert together.groups == [["a", "b", "c"]]
    assert 0.025 <= left["b"] - joined["b"] < 0.06


async def test_adaptive_the_oldest_call_waits_half_a_round_trip_once_it_has_company() -> None:
    """The account's pace says a group should hold about a dozen calls, but only two come:
    the group leaves when its oldest call has waited half a round trip (50 ms), not after
    twice the round trip (200 ms) hoping for the rest."""
    together = Recorder()
    coalescer = adaptive(together)
    await a_request(coalescer, 0.1)
    flying = asyncio.create_task(a_request(coalescer, 2.0))  # no group commit to help
    pace = []
    for i in range(12):  # a call every 5 ms: company 20 within a round trip
        pace.append(
            asyncio.create_task(coalescer.join(ACCOUNT, f"f{i}", deadline=far(), query=False))
        )
        await asyncio.sleep(0.005)
    await asyncio.gather(*pace)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pair = [
        asyncio.create_task(coalescer.join(ACCOUNT, name, deadline=far(), query=False))
        for name in ("old", "new")
    ]
    assert await asyncio.gather(*pair) == ["answer old", "answer new"]
    assert 0.04 <= loop.time() - started < 0.12
    flying.cancel()


class OneSubrequest:
    """Every call merges into one query."""

    def __init__(self, account: Account) -> None:
        self.account = account

    def add(self, item: str, query: bool) -> tuple[int, int]:
        return 1, 1


async def test_adaptive_merged_lookups_are_not_capped_at_25_calls() -> None:
    """Calls that merge into one subrequest (lookups of one shape) fill a group only by the
    Composite limits counted after merging: 30 of them ready at once travel as one request."""
    together = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(
        0.01, together, Metrics(), adaptive=True, tally=OneSubrequest
    )
    answers = await asyncio.gather(
        *(coalescer.join(ACCOUNT, f"m{i}", deadline=far(), query=True) for i in range(30))
    )
    assert answers == [f"answer m{i}" for i in range(30)]
    assert [len(group) for group in together.groups] == [30]
