"""The token state machine (salesforce/tokens.py) over boards in memory, without a network: one
token request however many callers wait, compare-and-invalidate, backoff, timeouts, rotation, a
board shared by two processes, and the fallback when the shared board is out of reach."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import SecretStr

from worker.accounts import Account, Flow
from worker.contract import ErrorCode
from worker.observability.metrics import Metrics
from worker.salesforce.oauth import AuthError, Grant
from worker.salesforce.tokens import AccountTokens, BoardTokenManager
from worker.stores.token_board import (
    FLEET,
    AccessToken,
    Backoff,
    BoardUnavailable,
    MemoryTokenBoard,
    Refusal,
)

FILE_TOKEN = SecretStr("refresh-0")


def account(flow: Flow = Flow.CLIENT_CREDENTIALS) -> Account:
    refresh = FILE_TOKEN if flow is Flow.REFRESH_TOKEN else None
    return Account(
        name="main",
        instance_url="https://org.example.com",
        token_url="https://login.example.com/services/oauth2/token",
        flow=flow,
        client_id="app",
        client_secret=SecretStr("secret"),
        refresh_token=refresh,
    )


class Endpoint:
    """A token endpoint: counts requests, rotates refresh tokens, refuses or hangs on demand."""

    def __init__(self, *, rotate: bool = False, delay: float = 0.0) -> None:
        self.sent: list[str | None] = []
        self.rotate = rotate
        self.delay = delay
        self.refuse = False

    async def __call__(self, account: Account, refresh_token: SecretStr | None) -> Grant:
        self.sent.append(refresh_token.get_secret_value() if refresh_token else None)
        await asyncio.sleep(self.delay)
        if self.refuse:
            raise AuthError("invalid client credentials", error="invalid_client", http_status=400)
        n = len(self.sent)
        rotated = SecretStr(f"refresh-{n}") if self.rotate else None
        return Grant(SecretStr(f"access-{n}"), time.time(), refresh_token=rotated)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SharedBoard(MemoryTokenBoard):
    """A board two processes share (as Redis is), which can be cut off."""

    source = FLEET

    def __init__(self, account: Account) -> None:
        super().__init__(account)
        self.down = False

    @property  # type: ignore[override]
    def available(self) -> bool:
        return not self.down

    def _reach(self) -> None:
        if self.down:
            raise BoardUnavailable("cut off")

    async def current(self) -> AccessToken | None:
        self._reach()
        return await super().current()

    async def lock(self) -> str | None:
        self._reach()
        return await super().lock()

    async def write_back(self, refresh_token: SecretStr) -> None:
        self._reach()
        await super().write_back(refresh_token)

    async def wait_available(self, within: float) -> bool:
        return not self.down


def machine(
    endpoint: Endpoint,
    metrics: Metrics,
    *,
    flow: Flow = Flow.CLIENT_CREDENTIALS,
    board: MemoryTokenBoard | None = None,
    clock: Clock | None = None,
    timeout: float = 5.0,
) -> AccountTokens:
    who = account(flow)
    return AccountTokens(
        who,
        endpoint,
        metrics,
        MemoryTokenBoard(who, clock or time.monotonic),
        board,
        backoff=Backoff(1.0, 8.0),
        request_timeout=timeout,
        clock=clock or time.monotonic,
    )


def counted(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, {"account": "main"})
    return value or 0.0


async def test_callers_waiting_for_a_token_share_one_request() -> None:
    endpoint, metrics = Endpoint(delay=0.05), Metrics()
    tokens = machine(endpoint, metrics)
    got = await asyncio.gather(*(tokens.get() for _ in range(50)))
    assert len(endpoint.sent) == 1
    assert {t.bearer for t in got} == {"Bearer access-1"}
    assert counted(metrics, "sfworker_token_waits_total") == 49
    assert tokens.token is got[0]  # held: handed out without waiting now


async def test_a_401_drops_the_token_only_if_it_is_still_the_current_one() -> None:
    endpoint, metrics = Endpoint(), Metrics()
    tokens = machine(endpoint, metrics)
    first = await tokens.get()
    assert await tokens.invalidate(first)
    second = await tokens.get()
    assert not await tokens.invalidate(first)  # a late 401 on the old token changes nothing
    assert tokens.token is second
    assert len(endpoint.sent) == 2
    assert counted(metrics, "sfworker_token_invalidations_total") == 1


async def test_a_refused_request_pauses_the_next_ones_and_the_pause_grows() -> None:
    endpoint, clock = Endpoint(), Clock()
    endpoint.refuse = True
    tokens = machine(endpoint, Metrics(), clock=clock)
    with pytest.raises(AuthError, match=r"invalid client credentials$"):
        await tokens.get()
    with pytest.raises(AuthError, match=r"paused for 1\.0 s after 1 failure\(s\)\)") as paused:
        await tokens.get()
    assert paused.value.error == "invalid_client"
    assert paused.value.http_status == 400
    assert len(endpoint.sent) == 1  # no hammering
    clock.now += 1.0
    with pytest.raises(AuthError, match=r"invalid client credentials$"):
        await tokens.get()
    with pytest.raises(AuthError, match=r"paused for 2\.0 s after 2 failure\(s\)"):
        await tokens.get()
    clock.now += 2.0
    endpoint.refuse = False
    assert (await tokens.get()).bearer == "Bearer access-3"


async def test_a_token_endpoint_that_does_not_answer_in_time_is_unavailable() -> None:
    tokens = machine(Endpoint(delay=1.0), Metrics(), timeout=0.1)
    with pytest.raises(AuthError, match=r"did not answer within 0\.1 s") as failed:
        await tokens.get()
    assert failed.value.code is ErrorCode.SALESFORCE_UNAVAILABLE
    assert failed.value.retryable


async def test_a_rotated_refresh_token_is_the_one_sent_next() -> None:
    endpoint = Endpoint(rotate=True)
    tokens = machine(endpoint, Metrics(), flow=Flow.REFRESH_TOKEN)
    await tokens.invalidate(await tokens.get())
    await tokens.invalidate(await tokens.get())
    assert endpoint.sent == ["refresh-0", "refresh-1"]


async def test_two_processes_sharing_a_board_make_one_request() -> None:
    endpoint, metrics = Endpoint(delay=0.2), Metrics()
    shared = SharedBoard(account())
    one, two = (machine(endpoint, metrics, board=shared) for _ in range(2))
    first, second = await asyncio.gather(one.get(), two.get())
    assert len(endpoint.sent) == 1
    assert first.same_as(second)
    assert first.source == FLEET
    # A 401 on the shared token reaches the board: the other process reads the new one.
    await one.invalidate(first)
    await two.invalidate(second)
    again = await asyncio.gather(one.get(), two.get())
    assert len(endpoint.sent) == 2
    assert again[0].same_as(again[1])


async def test_cut_off_from_the_shared_board_a_process_refreshes_alone_then_returns() -> None:
    endpoint = Endpoint()
    shared = SharedBoard(account())
    tokens = machine(endpoint, Metrics(), board=shared)
    shared.down = True
    alone = await tokens.get()
    assert alone.source != FLEET
    assert tokens.token is alone  # used while the board is out of reach
    shared.down = False
    assert tokens.token is None  # the board decides again
    back = await tokens.get()
    assert back.source == FLEET
    assert len(endpoint.sent) == 2


async def test_with_rotation_a_process_cut_off_does_not_refresh_alone() -> None:
    endpoint = Endpoint(rotate=True)
    who = account(Flow.REFRESH_TOKEN)
    shared = SharedBoard(who)
    tokens = machine(endpoint, Metrics(), flow=Flow.REFRESH_TOKEN, board=shared)
    await tokens.invalidate(await tokens.get())  # it has seen the token rotate
    shared.down = True
    with pytest.raises(AuthError, match="does not refresh it alone"):
        await tokens.get()
    assert endpoint.sent == ["refresh-0"]


async def test_the_manager_hands_each_account_its_state_machine() -> None:
    endpoint = Endpoint()
    manager = BoardTokenManager(endpoint, Metrics())
    who = account()
    assert manager.cached(who) is None
    token = await manager.get(who)
    assert manager.cached(who) is token
    assert manager.state(who) is manager.state(who)
    await manager.close()


def test_a_refusal_read_back_carries_its_pause() -> None:
    board = MemoryTokenBoard(account(), Clock())
    assert board.paused() is None
    asyncio.run(board.refused(Refusal("no", "AUTH_FAILED"), Backoff(2.0, 8.0)))
    refusal = board.paused()
    assert refusal is not None
    assert (refusal.failures, refusal.wait) == (1, 2.0)
