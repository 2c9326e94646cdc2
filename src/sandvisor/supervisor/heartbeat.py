"""A line every few seconds while a job waits: cold starts say what they do.

A job can wait before its code runs: for its env to build (a torch download takes minutes), for
its env's template to start (preloads import), for GPUs other jobs hold. Without a word in that
time a caller, or RunPod's progress updates, cannot tell a slow start from a hung one. While such
a wait lasts, :func:`heartbeat` says what is being waited for and for how long, every
``interval_s`` (``SANDVISOR_WAIT_NOTICE_INTERVAL_S``, 10 s), with what is known of its progress.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Say = Callable[[str], Awaitable[object]]
Sleeper = Callable[[float], Awaitable[object]]
Clock = Callable[[], float]


def notice(what: str, elapsed_s: float, detail: str | None = None) -> str:
    """One line of the heartbeat: ``still <what> (<elapsed> s[; <detail>])``."""
    tail = f"; {detail}" if detail else ""
    return f"still {what} ({elapsed_s:.0f} s{tail})"


@asynccontextmanager
async def heartbeat(
    say: Say,
    what: str,
    interval_s: float,
    detail: Callable[[], str | None] | None = None,
    *,
    clock: Clock = time.monotonic,
    sleep: Sleeper = asyncio.sleep,
) -> AsyncIterator[None]:
    """For the body's duration, ``say`` a :func:`notice` every ``interval_s`` seconds (none
    when the body ends sooner, and none at all for ``interval_s`` <= 0).

    ``detail()`` adds what is known of the progress (the last line an installer printed, say).
    A failure of ``say`` ends the notices, never the wait. ``clock`` and ``sleep`` are
    injected for tests.
    """
    if interval_s <= 0:
        yield
        return
    started = clock()

    async def beat() -> None:
        while True:
            await sleep(interval_s)
            await say(notice(what, clock() - started, detail() if detail else None))

    beating = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
