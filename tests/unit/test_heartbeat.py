"""The notices a waiting job gets: what it waits for, for how long, how far it got."""

from __future__ import annotations

import asyncio

import pytest

from sandvisor.supervisor.heartbeat import heartbeat, notice


class ManualTime:
    """A clock the test moves, and a sleeper that wakes when the test says an interval passed."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleepers: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.sleepers.put(woken)
        await woken

    async def pass_interval(self, seconds: float) -> None:
        """Move the clock on and wake the sleeping heartbeat; returns once it said its line."""
        woken = await self.sleepers.get()
        self.now += seconds
        woken.set_result(None)
        for _ in range(5):  # let the heartbeat run up to its next sleep
            await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("what", "elapsed", "detail", "line"),
    [
        ("installing dependencies", 10.2, None, "still installing dependencies (10 s)"),
        ("waiting for 1 GPU(s)", 59.6, None, "still waiting for 1 GPU(s) (60 s)"),
        (
            "installing dependencies",
            20,
            "last from the installer: Downloading torch (846.1MiB)",
            "still installing dependencies (20 s; last from the installer: Downloading torch"
            " (846.1MiB))",
        ),
    ],
)
def test_a_notice_says_what_how_long_and_how_far(
    what: str, elapsed: float, detail: str | None, line: str
) -> None:
    assert notice(what, elapsed, detail) == line


async def test_a_line_each_interval_while_the_wait_lasts() -> None:
    time = ManualTime()
    said: list[str] = []
    progress = iter([None, "Resolved 12 packages", "Downloading torch"])

    async def say(text: str) -> None:
        said.append(text)

    async with heartbeat(
        say,
        "installing dependencies",
        10,
        lambda: next(progress),
        clock=time.clock,
        sleep=time.sleep,
    ):
        assert said == []  # nothing before the first interval
        for _ in range(3):
            await time.pass_interval(10)
    assert said == [
        "still installing dependencies (10 s)",
        "still installing dependencies (20 s; Resolved 12 packages)",
        "still installing dependencies (30 s; Downloading torch)",
    ]


async def test_a_short_wait_says_nothing_and_leaves_nothing_running() -> None:
    time = ManualTime()
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    tasks = len(asyncio.all_tasks())
    async with heartbeat(say, "waiting", 10, clock=time.clock, sleep=time.sleep):
        await time.sleepers.get()  # the heartbeat sleeps; the wait ends before it wakes
    assert said == [] and len(asyncio.all_tasks()) == tasks


async def test_interval_zero_is_off() -> None:
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    async with heartbeat(say, "waiting", 0):
        await asyncio.sleep(0)
    assert said == []


async def test_a_failing_say_ends_the_notices_not_the_wait() -> None:
    time = ManualTime()

    async def say(text: str) -> None:
        raise ConnectionError("progress update lost")

    async with heartbeat(say, "waiting", 10, clock=time.clock, sleep=time.sleep):
        await time.pass_interval(10)
        result = "the body goes on"
    assert result == "the body goes on"
