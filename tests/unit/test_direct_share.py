"""Issue 27, point 3: the request queue's direct slots. A job moves to its lane only when the move
buys something: another account is present, or the window is full and turns over too slowly.
An account alone runs the whole prefetch and its backlog waits in the window, in order."""

from __future__ import annotations

import asyncio

import pytest

from worker.runtime.direct_share import PRESENT_FOR, DirectShare, Turn
from worker.runtime.window import Window


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _arrive(share: DirectShare, account: str) -> asyncio.Task[Turn]:
    share.enter(account, window=True)
    return asyncio.ensure_future(share.turn(account))


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_account_alone_runs_the_whole_prefetch_and_its_backlog_waits_in_order() -> None:
    share = DirectShare(prefetch=4, window=100, look_ahead=5.0, clock=Clock())
    turns = [_arrive(share, "main") for _ in range(7)]
    await _settle()
    assert [t.result() for t in turns[:4]] == [Turn.RUN] * 4  # not half: nobody to share with
    assert not any(t.done() for t in turns[4:])  # waiting, not moved
    share.release("main")
    await _settle()
    assert turns[4].result() is Turn.RUN
    assert [t.done() for t in turns[5:]] == [False, False]
    assert share.waiting == 2


async def test_another_account_arriving_moves_the_waiting_backlog() -> None:
    share = DirectShare(prefetch=4, window=100, look_ahead=5.0, clock=Clock())
    main = [_arrive(share, "main") for _ in range(6)]
    await _settle()
    quick = _arrive(share, "quick")
    await _settle()
    assert [t.result() for t in main] == [Turn.RUN] * 4 + [Turn.MOVE] * 2
    # Every slot is held by main: quick's job goes to its own lane (runs there at once).
    assert quick.result() is Turn.MOVE
    # With company, main runs its share (half the prefetch) and the rest moves.
    for _ in range(3):
        share.release("main")
    assert [await _arrive(share, "main") for _ in range(2)] == [Turn.RUN, Turn.MOVE]
    assert await _arrive(share, "quick") is Turn.RUN


async def test_company_is_remembered_for_a_moment_after_its_last_job() -> None:
    clock = Clock()
    share = DirectShare(prefetch=2, window=100, look_ahead=5.0, clock=clock)
    share.enter("quick", window=False)  # a job in quick's lane
    share.leave("quick", window=False)
    assert [await _arrive(share, "main") for _ in range(2)] == [Turn.RUN, Turn.MOVE]
    clock.now += PRESENT_FOR + 0.01
    share.release("main")
    assert await _arrive(share, "main") is Turn.RUN  # alone again: the whole prefetch
    assert await _arrive(share, "main") is Turn.RUN


async def test_a_full_window_that_turns_over_too_slowly_moves_its_waiting_jobs() -> None:
    clock = Clock()
    share = DirectShare(prefetch=2, window=5, look_ahead=0.05, clock=clock)
    turns = [_arrive(share, "main") for _ in range(4)]
    await _settle()
    assert [t.done() for t in turns] == [True, True, False, False]
    clock.now += 0.05  # waited the look-ahead, but the window (5) is not full: nothing behind
    await asyncio.sleep(0.1)
    assert not turns[2].done()
    last = _arrive(share, "main")  # the window is full now: the aged jobs move
    await _settle()
    assert [turns[2].result(), turns[3].result()] == [Turn.MOVE, Turn.MOVE]
    assert not last.done()  # it just came: it waits for a slot
    clock.now += 0.05
    await asyncio.sleep(0.1)  # its own look-ahead passes, the window still full
    assert last.result() is Turn.MOVE


async def test_a_waiting_job_cancelled_after_it_was_given_a_slot_gives_it_back() -> None:
    share = DirectShare(prefetch=1, window=100, look_ahead=5.0, clock=Clock())
    first = await _arrive(share, "main")
    waiting = _arrive(share, "main")
    then = _arrive(share, "main")
    await _settle()
    assert first is Turn.RUN
    share.release("main")  # the slot goes to `waiting`, which is cancelled before it runs
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await _settle()
    assert then.result() is Turn.RUN


async def test_a_stopping_worker_starts_none_of_the_jobs_waiting_for_a_slot() -> None:
    share = DirectShare(prefetch=1, window=100, look_ahead=5.0, clock=Clock())
    assert await _arrive(share, "main") is Turn.RUN
    waiting = [_arrive(share, "main") for _ in range(3)]
    await _settle()
    assert share.close() == 3
    await _settle()
    assert [t.result() for t in waiting] == [Turn.LEAVE] * 3
    share.release("main")  # the running job ends: its slot goes to nobody
    assert await _arrive(share, "main") is Turn.LEAVE


# --- the window: narrow while one account is alone (window.py) ----------------------------------


def _windowed(clock: Clock, sizes: list[int], calm_for: float = 10.0) -> DirectShare:
    window = Window(
        4, 100, widen_after=0.05, calm_for=calm_for, on_change=sizes.append, clock=clock
    )
    return DirectShare(prefetch=2, window=window, look_ahead=5.0, clock=clock)


async def test_an_account_alone_whose_jobs_turn_over_quickly_keeps_the_window_narrow() -> None:
    clock, sizes = Clock(), []
    share = _windowed(clock, sizes)
    for _ in range(50):  # a burst, each job done within a few ms of its arrival
        turn = _arrive(share, "main")
        await _settle()
        if turn.done():
            share.release("main")
            share.leave("main", window=True)
        clock.now += 0.004
        await asyncio.sleep(0)
    assert share.window.size == 4
    assert sizes == []  # never resized: nothing to look ahead for


async def test_another_account_widens_the_window_at_once() -> None:
    clock, sizes = Clock(), []
    share = _windowed(clock, sizes)
    assert await _arrive(share, "main") is Turn.RUN
    share.enter("quick", window=False)  # a job in quick's lane
    assert share.window.size == 100
    assert sizes == [100]


async def test_a_job_that_waits_for_a_slot_widens_the_window() -> None:
    clock, sizes = Clock(), []
    share = _windowed(clock, sizes)
    turns = [_arrive(share, "main") for _ in range(3)]
    await _settle()
    assert [t.done() for t in turns] == [True, True, False]
    assert sizes == []
    clock.now += 0.06  # the third waited `widen_after` for a slot: the jobs turn over slowly
    await asyncio.sleep(0.1)
    assert sizes == [100]
    assert not turns[2].done()  # widened, not moved: nobody else is here


async def test_the_window_narrows_again_once_nothing_needs_it_for_calm_for() -> None:
    clock, sizes = Clock(), []
    share = _windowed(clock, sizes, calm_for=0.05)
    share.enter("quick", window=False)
    assert await _arrive(share, "main") is Turn.RUN
    share.leave("quick", window=False)
    assert sizes == [100]
    clock.now += PRESENT_FOR + 0.01  # quick is gone
    # A job still waiting for a slot past `widen_after` keeps it wide.
    waiting = [_arrive(share, "main") for _ in range(2)]
    await _settle()
    assert [t.done() for t in waiting] == [True, False]
    clock.now += 0.06
    await asyncio.sleep(0.1)
    assert sizes == [100]
    share.release("main")
    await _settle()
    assert waiting[1].result() is Turn.RUN  # nobody waits now
    share.release("main")  # and a slot is free: the jobs turn over
    clock.now += 0.06
    await asyncio.sleep(0.1)
    assert sizes == [100, 4]


async def test_the_window_narrows_only_once_the_deliveries_held_leave_room_for_it() -> None:
    """Narrowing starts a narrow consumer while the wide one's deliveries are still held: the
    two together stay within the wide window."""
    clock, sizes = Clock(), []
    share = _windowed(clock, sizes, calm_for=0.05)
    for _ in range(97):  # deliveries of the request queue held
        share.enter("main", window=True)
    share.enter("quick", window=False)
    share.leave("quick", window=False)
    assert sizes == [100]
    clock.now += PRESENT_FOR + 0.06
    await asyncio.sleep(0.1)
    assert sizes == [100]  # 97 held + 4 would pass 100
    for _ in range(2):
        share.leave("main", window=True)
    clock.now += 0.06
    await asyncio.sleep(0.1)
    assert sizes == [100, 4]


async def test_slots_that_turn_over_slowly_widen_the_narrow_window_with_nothing_waiting() -> None:
    """The narrow window holds no more than the slots (nothing waits in the worker): every slot
    held for `widen_after` is what tells a slow backlog."""
    clock, sizes = Clock(), []
    window = Window(2, 100, widen_after=0.05, calm_for=10.0, on_change=sizes.append, clock=clock)
    share = DirectShare(prefetch=2, window=window, look_ahead=5.0, clock=clock)
    assert [await _arrive(share, "main") for _ in range(2)] == [Turn.RUN, Turn.RUN]
    for step in (0.03, 0.01):  # 30 ms in, then 10 ms later, a job ends and the next starts
        clock.now += step
        share.release("main")
        assert await _arrive(share, "main") is Turn.RUN
        await asyncio.sleep(0.06)
    assert sizes == []  # the last two started 30 and 40 ms in: they turn over quickly
    clock.now += 0.03
    await asyncio.sleep(0.06)
    assert sizes == []  # the oldest has run 40 ms
    clock.now += 0.02
    await asyncio.sleep(0.06)
    assert sizes == [100]  # every slot held and the oldest has run 60 ms: slow
