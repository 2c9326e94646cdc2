"""escalate(): ask, a grace period on an injected sleeper, then force."""

from __future__ import annotations

import asyncio

from sandvisor.supervisor.escalation import escalate


class FakeSleeper:
    """A sleeper whose sleeps end only when the test says the grace period is over."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.over = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self.over.wait()


async def test_ended_within_grace_is_not_forced() -> None:
    ended: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    sleeper, steps = FakeSleeper(), []

    async def ask() -> None:
        steps.append("ask")
        ended.set_result(None)  # it leaves as soon as it is asked

    async def force() -> None:
        steps.append("force")

    assert await escalate(ended, ask, force, 5.0, sleep=sleeper) is True
    assert steps == ["ask"]
    assert sleeper.asked == []  # already ended: no grace period was waited


async def test_forced_after_the_grace_period() -> None:
    ended: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    sleeper, steps = FakeSleeper(), []

    async def ask() -> None:
        steps.append("ask")

    async def force() -> None:
        steps.append("force")
        ended.set_result(None)

    escalating = asyncio.ensure_future(escalate(ended, ask, force, 5.0, sleep=sleeper))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert steps == ["ask"] and sleeper.asked == [5.0]  # waiting out the grace period
    sleeper.over.set()
    assert await escalating is False
    assert steps == ["ask", "force"]


async def test_ending_during_the_grace_period_cancels_the_timer() -> None:
    ended: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    sleeper = FakeSleeper()

    async def nothing() -> None:
        return None

    escalating = asyncio.ensure_future(escalate(ended, nothing, nothing, 5.0, sleep=sleeper))
    await asyncio.sleep(0)
    ended.set_result(None)
    assert await escalating is True
    assert not ended.cancelled()
