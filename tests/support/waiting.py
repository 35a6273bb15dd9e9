"""Waiting for a condition, with a deadline that names what was awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def wait_until(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `predicate` every 50 ms; fail naming `what` if it is still false after `within` s."""
    try:
        async with asyncio.timeout(within):
            while not await predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"still waiting for {what} after {within} s") from None
