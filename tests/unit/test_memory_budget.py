"""The memory budget (worker/memory.py): work beyond it waits, the oldest job always moves, one
job too large for it is refused, and the prefetch windows are fitted to it at start."""

from __future__ import annotations

import asyncio

import pytest

from worker.memory import MemoryBudget, OverBudget, fit_deliveries
from worker.settings import Settings

MIB = 1024 * 1024


async def test_work_past_the_budget_waits_until_room_is_freed() -> None:
    budget = MemoryBudget(100 * MIB, ceiling=30 * MIB)
    first, second, third = budget.open(), budget.open(), budget.open()
    await first.take(25 * MIB)
    await second.take(25 * MIB)
    waiting = asyncio.create_task(third.take(25 * MIB))  # 75 MiB > the 100 - 30 others may use
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert budget.waiting == 1
    second.release()
    await asyncio.wait_for(waiting, 1)
    assert budget.used == 50 * MIB


async def test_the_oldest_job_may_use_the_headroom_the_others_keep_for_it() -> None:
    budget = MemoryBudget(100 * MIB, ceiling=40 * MIB)
    oldest, younger = budget.open(), budget.open()
    await younger.take(30 * MIB)
    await oldest.take(20 * MIB)
    await younger.take(10 * MIB)  # 60 MiB: just the 100 - 40 others may use
    await oldest.take(15 * MIB)  # 75 MiB: only the oldest may
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await budget.open().take(1)


async def test_a_job_that_alone_cannot_fit_is_refused_not_waited_for() -> None:
    budget = MemoryBudget(100 * MIB, ceiling=25 * MIB)
    hold = budget.open()
    await hold.take(20 * MIB)
    with pytest.raises(OverBudget):
        await hold.read(2 * MIB)  # counted three times: 26 MiB
    hold.release()
    assert budget.used == 0


def test_the_defaults_fit_and_large_messages_narrow_the_prefetch_windows() -> None:
    defaults = Settings()
    assert fit_deliveries(defaults, 16) == defaults  # 64 KiB x (1,024 + 16 lanes x 32)
    narrowed = fit_deliveries(Settings(max_message_bytes=MIB), 4)
    deliveries = (narrowed.request_prefetch + 4 * narrowed.prefetch) * MIB
    assert deliveries <= defaults.memory_budget_bytes // 2
    with pytest.raises(ValueError, match="SFWORKER_MEMORY_BUDGET_BYTES"):
        fit_deliveries(Settings(max_message_bytes=200 * MIB), 1)
