"""Ending a process politely first: ask it to leave, wait a grace period, then force it.

One function for every "ask, grace, force" in the supervisor (an actor's end of stream, then
its tree's SIGTERM and SIGKILL; a template's closed control socket, then SIGKILL). The sleeper
is injected so that the grace period can be tested without waiting for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Step = Callable[[], Awaitable[object]]
Sleeper = Callable[[float], Awaitable[object]]


async def escalate(
    ended: asyncio.Future[object],
    ask: Step,
    force: Step,
    grace_s: float,
    *,
    sleep: Sleeper = asyncio.sleep,
) -> bool:
    """``ask()``, wait up to ``grace_s`` for ``ended``, then ``force()`` if it has not ended.

    ``ended`` (the process's exit, usually a shared task) is waited for, never cancelled.
    Returns True when it ended within the grace period (``force`` was not called). Raises what
    ``ask`` or ``force`` raise.
    """
    await ask()
    if not ended.done():
        timer = asyncio.ensure_future(sleep(grace_s))
        try:
            await asyncio.wait({ended, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
    if ended.done():
        return True
    await force()
    return False
