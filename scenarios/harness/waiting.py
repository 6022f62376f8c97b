"""Wait on an observable condition, with a bound (never a bare sleep)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


class WaitTimeout(AssertionError):
    """The condition did not hold in time; the message says what was awaited."""


async def until(
    condition: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.01,
) -> Any:
    """Poll ``condition`` until it returns a truthy value; return that value.

    Raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = condition()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what} (last value: {last!r})")
        await asyncio.sleep(interval)


async def settle(
    condition: Callable[[], Any | Awaitable[Any]], *, timeout: float, interval: float = 0.01
) -> bool:
    """Like :func:`until`, but return False on timeout: the checks then say what is wrong."""
    try:
        await until(condition, timeout=timeout, what="", interval=interval)
    except WaitTimeout:
        return False
    return True
